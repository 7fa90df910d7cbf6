"""Evaluating the steps of a round side by side: in this process (``SerialExecutor``) or as Ray tasks
(``RayExecutor``), on every GPU of a machine or a cluster, with the driver as the only writer.

The driver turns each scheme into a ``StepJob`` (plain data: the parent's CPU state dict and architecture, the
strategy, the step's seed), an executor runs ``execute(job, context)`` wherever it runs, and the driver takes the
``StepOutcome`` back (the measured ``StepResult`` and the child's state and architecture) into its evaluator's
model cache and, in the search loop, into the store. Workers never open the store or the cache. The task (data,
budget), the base model and its measurements travel once per run, as a ``WorkerContext`` in Ray's object store.

Each step is seeded from the run's seed and the scheme's content hash (``step_seed``), so an executor changes when
a step runs, never what it computes: on the CPU with the same torch threads, both executors and
``Evaluator.evaluate`` give the same results. A worker process that dies (killed, out of memory, its node lost)
costs one retry on another worker (Ray's ``max_retries``), then the step is a FAIL saying so; an exception of
the step itself (``CompressionError``, ...) is a FAIL at once, never retried. ``ray`` is imported only by
``RayExecutor``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from automc.catalog import Strategy
from automc.errors import DiskError
from automc.search._base import History, Observation, SchemeKey
from automc.search.evaluator import FAIL, StepResult, _measure, _Measured, _reason, measured_result, step_seed

if TYPE_CHECKING:
    import torch
    from torch import nn

    from automc.compress.base import Method, Task
    from automc.search.evaluator import Evaluator


@dataclass(frozen=True)
class StepJob:
    """One step to evaluate, as plain data: the parent model (CPU state dict + ``saving.describe`` architecture)
    and its measurements, the strategy to apply and the step's seed."""

    scheme: SchemeKey  # the child's scheme; its last id is ``strategy.id``
    strategy: Strategy
    parent_state: dict[str, torch.Tensor]
    parent_arch: dict[str, Any]
    parent: _Measured  # the parent's parameters and validation counts (step_ar, step_pr)
    seed: int

    @property
    def strategy_id(self) -> str:
        return self.strategy.id


@dataclass(frozen=True)
class StepOutcome:
    """What a worker sends back: the result (COMPLETE or FAIL with its reason) and, when COMPLETE, the child."""

    result: StepResult
    child_state: dict[str, torch.Tensor] | None = None
    child_arch: dict[str, Any] | None = None
    measured: _Measured | None = None
    worker: str = ""  # host:pid of the process that ran it (the driver's for a FAIL the driver made)


@dataclass(frozen=True)
class WorkerContext:
    """What every step of a run shares; sent to each worker once. The task's data is on the CPU here (each worker
    moves it to its own device once); ``device`` is where steps run (``"cpu"`` or ``"cuda"``)."""

    task: Task
    base_model: nn.Module  # on the CPU: the template parents are rebuilt into (``ModelCache``'s rule)
    base: _Measured
    run_seed: int
    data_fraction: float = 1.0
    device: str = "cpu"
    methods: Mapping[str, type[Method]] | None = None

    @classmethod
    def from_evaluator(cls, evaluator: Evaluator, *, portable: bool = True) -> WorkerContext:
        """The context of ``evaluator``'s run; ``portable``: with the data copied to the CPU (for other
        processes), else with the evaluator's task as it is (for this process)."""
        import torch

        task = evaluator.task
        cpu = torch.device("cpu")
        base = evaluator._base_on(task)
        if portable:
            task = dataclasses.replace(task, data=task.data.to(cpu), device=cpu)
        return cls(task, copy.deepcopy(evaluator.base_model).to(cpu), base, evaluator.seed, evaluator.data_fraction,
                   torch.device(evaluator.task.device).type, evaluator.methods)

    def on_device(self) -> WorkerContext:
        """This context with the task's data on ``device`` (the first CUDA device this process sees)."""
        import torch

        dev = torch.device(self.device)
        if self.task.device == dev and self.task.data.device == dev:
            return self
        return dataclasses.replace(self, task=dataclasses.replace(self.task, data=self.task.data.to(dev), device=dev))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def rebuild_model(arch: Mapping[str, Any], state: Mapping[str, torch.Tensor], template: nn.Module) -> nn.Module:
    """The model described by ``arch`` with ``state`` loaded, built on a copy of ``template`` (the base model)."""
    from automc.compress.saving import rebuild

    model = rebuild(dict(arch), copy.deepcopy(template))
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


def _fail(scheme: SchemeKey, error: str, ctx: WorkerContext, seconds: float = 0.0, train_seconds: float = 0.0,
          worker: str = "") -> StepOutcome:
    """A FAIL outcome with the fields ``Evaluator`` fills for one."""
    task = ctx.task
    device = str(task.device) if str(task.device).split(":")[0] == ctx.device else ctx.device  # not the CPU copy
    return StepOutcome(StepResult(scheme, FAIL, error, seconds=seconds, train_seconds=train_seconds,
                                  device=device, fidelity="search", epochs=float(task.budget.epochs),
                                  data_fraction=ctx.data_fraction, seed=step_seed(ctx.run_seed, scheme)),
                       worker=worker or worker_name())


def execute(job: StepJob, ctx: WorkerContext) -> StepOutcome:
    """Rebuild the parent, apply the job's strategy (``run_step``), measure the child: what a worker runs.

    Never raises for a bad candidate: any exception of the step is a FAIL outcome with the reason.
    """
    from automc.search.evaluator import run_step

    t0 = time.perf_counter()
    train_s = 0.0
    try:
        parent = rebuild_model(job.parent_arch, job.parent_state, ctx.base_model)
        child, train_s = run_step(parent, job.strategy, ctx.task, base_params=ctx.base.params, seed=job.seed,
                                  methods=ctx.methods)
        m = _measure(child, ctx.task)
    except Exception as e:  # noqa: BLE001 - a bad candidate is recorded, never retried
        return _fail(job.scheme, _reason(e), ctx, time.perf_counter() - t0, train_s)
    result = measured_result(job.scheme, m, job.parent, ctx.base, ctx.task, run_seed=ctx.run_seed,
                             seconds=time.perf_counter() - t0, train_seconds=train_s, fidelity="search",
                             data_fraction=ctx.data_fraction)
    from automc.compress.saving import describe

    return StepOutcome(result, cpu_state(child), describe(child), m, worker_name())


# -- executors ------------------------------------------------------------------------------------------------

class Executor(Protocol):
    """Runs jobs and yields ``(index in jobs, outcome)`` as each finishes, in any order."""

    def map(self, jobs: Sequence[StepJob]) -> Iterator[tuple[int, StepOutcome]]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs jobs one after another in this process (``--workers 1``: no Ray), with ``threads`` torch threads."""

    def __init__(self, context: WorkerContext, *, threads: int | None = None) -> None:
        self.context = context
        self.threads = threads
        self.workers = 1

    def map(self, jobs: Sequence[StepJob]) -> Iterator[tuple[int, StepOutcome]]:
        import torch

        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            for i, job in enumerate(jobs):
                yield i, execute(job, self.context)
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        pass

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What a Ray worker process keeps between tasks: the context of the run it last served, by token, so the data
# crosses from the object store once per worker process, not once per step.
_WORKER_CONTEXT: dict[str, WorkerContext] = {}


def _worker_context(context_ref: list[Any], token: str, threads: int) -> WorkerContext:
    """The run's context in this worker process: fetched once per process (the reference comes nested so that Ray
    does not resolve it for every task) and moved to the worker's device."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    ctx = _WORKER_CONTEXT.get(token)
    if ctx is None:
        import ray

        _WORKER_CONTEXT.clear()
        ctx = _WORKER_CONTEXT[token] = ray.get(context_ref[0]).on_device()
    return ctx


def _ray_entry(job: StepJob, context_ref: list[Any], token: str, threads: int) -> StepOutcome:
    """The Ray task of one step."""
    return execute(job, _worker_context(context_ref, token, threads))


def _ray_warm(context_ref: list[Any], token: str, threads: int, hold: float) -> str:
    """The warm-up task: load the context, then stay busy ``hold`` seconds so that each lands on its own worker."""
    _worker_context(context_ref, token, threads)
    time.sleep(hold)
    return worker_name()


class RayExecutor:
    """Runs up to ``workers`` jobs at a time as Ray tasks, each with ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs (a fraction shares a GPU) and ``threads`` torch threads (default: its CPUs).

    Without ``address`` a local Ray instance is started for the run and shut down by ``close``; with it, the
    executor joins that cluster (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``). A Ray already initialised in
    this process is used as it is and left running. ``ray_init`` adds keyword arguments to ``ray.init``.
    """

    def __init__(self, context: WorkerContext, *, workers: int, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, address: str | None = None, threads: int | None = None,
                 max_retries: int = 1, ray_init: Mapping[str, Any] | None = None) -> None:
        import logging

        from automc.errors import ValidationError

        try:
            import ray
        except ImportError:
            raise ValidationError("more than one worker needs Ray: pip install 'automc[distributed]'",
                                  field="--workers") from None
        if workers < 1:
            raise ValidationError(f"must be at least 1, got {workers}", field="--workers")
        self.workers = int(workers)
        self.max_retries = int(max_retries)
        self.threads = int(threads) if threads else max(1, int(cpus_per_worker))
        self._owned = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR}
            if address is None:
                kw["num_cpus"] = max(1, math.ceil(self.workers * cpus_per_worker))
            kw.update(ray_init or {})
            try:
                ray.init(address=address, **kw)
            except (ConnectionError, ValueError, RuntimeError) as e:
                hint = ("; a cluster started with token authentication needs RAY_AUTH_MODE=token and its token "
                        "(~/.ray/auth_token or RAY_AUTH_TOKEN) here too" if address else "")
                raise ValidationError(f"cannot {'join the Ray cluster at ' + address if address else 'start Ray'}: "
                                      f"{_reason(e)}{hint}", field="--ray-address" if address else "--workers"
                                      ) from None
            self._owned = True
        try:
            gpus = ray.cluster_resources().get("GPU", 0.0)
            if gpus_per_worker > gpus and address is None:  # a local instance never grows: the steps would wait forever
                raise ValidationError(f"{gpus_per_worker:g} GPU per worker, but Ray sees {gpus:g} GPU(s) here",
                                      field="--gpus-per-worker")
            self._context = ray.put(context)
            self._token = uuid.uuid4().hex
            # max_calls=0: a worker process serves any number of steps (Ray's default for GPU tasks is one step per
            # process), so the task's data crosses to each worker and its GPU once per run
            self._task = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_retries=self.max_retries,
                                    retry_exceptions=False, max_calls=0)(_ray_entry).options(name="automc-step")
            self._warm = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                    max_calls=0)(_ray_warm).options(name="automc-warm-up")
        except BaseException:
            self.close()
            raise
        self.context = context

    def warm_up(self) -> list[str]:
        """Start the workers and load the run's context into each (what the first steps would otherwise pay for);
        returns the worker names."""
        import ray

        return ray.get([self._warm.remote([self._context], self._token, self.threads, 0.5)
                        for _ in range(self.workers)])

    def map(self, jobs: Sequence[StepJob]) -> Iterator[tuple[int, StepOutcome]]:
        """Submit at most ``workers`` jobs at a time; yield each outcome as it arrives. Leaving early (Ctrl-C, a
        closed generator) cancels the jobs still running."""
        import ray

        todo = iter(enumerate(jobs))
        pending: dict[Any, tuple[int, StepJob]] = {}

        def submit() -> None:
            while len(pending) < self.workers:
                nxt = next(todo, None)
                if nxt is None:
                    return
                ref = self._task.remote(nxt[1], [self._context], self._token, self.threads)
                pending[ref] = nxt

        try:
            submit()
            while pending:
                # a timeout returns to Python now and then, so that Ctrl-C is seen while steps run
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    i, job = pending.pop(ref)
                    yield i, self._collect(ref, job)
                submit()
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def _collect(self, ref: Any, job: StepJob) -> StepOutcome:
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        t0 = time.perf_counter()
        try:
            return ray.get(ref)
        except TaskCancelledError:
            raise
        except RayTaskError as e:  # the step raised past ``execute`` (it catches its own errors): not retried
            cause = e.cause if isinstance(e.cause, BaseException) else e
            return _fail(job.scheme, _reason(cause), self.context, time.perf_counter() - t0)
        except RayError as e:  # the worker process or its node died, on every attempt
            attempts = self.max_retries + 1
            return _fail(job.scheme, f"worker lost on {attempts} attempt{'s' * (attempts > 1)}: {_reason(e)}",
                         self.context, time.perf_counter() - t0)

    def close(self) -> None:
        """Shut down the Ray instance this executor started (a joined or pre-existing one stays)."""
        if self._owned:
            import ray

            self._owned = False
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(evaluator: Evaluator, *, workers: int = 1, gpus_per_worker: float = 0.0,
                  cpus_per_worker: float = 1.0, address: str | None = None,
                  threads: int | None = None) -> SerialExecutor | RayExecutor:
    """The executor of ``evaluator``'s run: ``SerialExecutor`` for one local worker (no Ray), else a
    ``RayExecutor`` (the CLI's ``--workers``, ``--gpus-per-worker``, ``--ray-address``)."""
    if workers <= 1 and address is None:
        return SerialExecutor(WorkerContext.from_evaluator(evaluator, portable=False), threads=threads)
    return RayExecutor(WorkerContext.from_evaluator(evaluator), workers=workers, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker, address=address, threads=threads)


# -- the driver's side ------------------------------------------------------------------------------------------

def prepare(evaluator: Evaluator, scheme: Sequence[str]) -> StepJob | StepResult:
    """The job that evaluates ``scheme`` from its parent's model (from the evaluator's cache, or replayed), or the
    result at once when there is nothing to run: the base model, a scheme the rules forbid, a step that failed
    before, a parent that cannot be built or measured (the results ``Evaluator.evaluate`` gives)."""
    key = tuple(scheme)
    if not key:
        return evaluator.base()
    t0 = time.perf_counter()
    refused = evaluator.refused(key, t0)
    if refused is not None:
        return refused
    try:
        parent, meta = evaluator._replay(key[:-1])
    except DiskError:
        raise  # the cache's disk, not the prefix: the run stops and resumes
    except Exception as e:  # noqa: BLE001 - a failing prefix fails its extensions
        return evaluator._fail(key, _PREFIX + _reason(e), time.perf_counter() - t0)
    try:
        parent_m = evaluator._parent_measurement(key[:-1], parent, meta)
    except Exception as e:  # noqa: BLE001 - as in evaluate: part of the step
        evaluator.cache.put_failure(key, _reason(e))
        return evaluator._fail(key, _reason(e), time.perf_counter() - t0)
    from automc.compress.saving import describe

    return StepJob(key, evaluator.space.strategy(key[-1]), cpu_state(parent), describe(parent), parent_m,
                   step_seed(evaluator.seed, key))


def absorb(evaluator: Evaluator, outcome: StepOutcome) -> StepResult:
    """Take a worker's outcome into the evaluator's model cache as ``Evaluator.evaluate`` does (the child of a
    COMPLETE step; the reason of a FAIL, so that it is never retried and its extensions fail fast); return the
    result."""
    r, m = outcome.result, outcome.measured
    if r.ok and outcome.child_state is not None and outcome.child_arch is not None and m is not None:
        child = rebuild_model(outcome.child_arch, outcome.child_state, evaluator._fresh())
        evaluator.cache.put(r.scheme, child, {"params": m.params, "val_correct": m.val_correct,
                                              "val_total": m.val_total})
    elif not r.ok:
        evaluator.cache.put_failure(r.scheme, r.error)
    return r


def round_plan(proposals: Iterable[Sequence[str]], history: History, budget: int) -> list[SchemeKey]:
    """The steps a serial round would evaluate next, in its order, if every step still to run succeeds: each
    proposal's missing prefixes (a known FAIL ends that proposal), at most ``budget`` of them.

    Run the plan's steps whose parent is evaluated, add their observations to ``history``, plan again, until
    the plan has none left: the round evaluates exactly the steps the serial loop does (a failure only drops
    its own extensions, which lets later proposals' steps into the budget, as in the serial loop).
    """
    plan: list[SchemeKey] = []
    planned: set[SchemeKey] = set()
    for scheme in proposals:
        for k in range(1, len(scheme) + 1):
            prefix = tuple(scheme[:k])
            seen = history.get(prefix)
            if seen is not None:
                if not seen.ok:
                    break
                continue
            if prefix in planned:
                continue
            if len(plan) >= budget:
                return plan
            plan.append(prefix)
            planned.add(prefix)
    return plan


def ready(plan: Sequence[SchemeKey], history: History) -> list[SchemeKey]:
    """The planned steps that can run now: their parent is evaluated (and COMPLETE: a plan holds no other)."""
    return [s for s in plan if s not in history and s[:-1] in history]


def evaluate_batch(evaluator: Evaluator, schemes: Iterable[Sequence[str]], executor: Executor, *,
                   started: Callable[[SchemeKey], None] | None = None) -> Iterator[tuple[int, StepResult]]:
    """Evaluate ``schemes`` through ``executor`` and yield ``(index, result)`` as each finishes.

    Independent schemes run side by side; a scheme whose parent is also in the batch waits for it (in waves),
    and fails at once when the parent failed. The results equal ``evaluator.evaluate``'s one by one.
    ``started(scheme)`` is called just before each scheme is prepared (the search loop writes RUNNING there).
    """
    keys = [tuple(s) for s in schemes]
    waiting = list(range(len(keys)))
    while waiting:
        pending = {keys[i] for i in waiting}
        wave = [i for i in waiting if not keys[i] or keys[i][:-1] not in pending]  # parents shorter: never empty
        waiting = [i for i in waiting if i not in set(wave)]
        jobs: list[StepJob] = []
        where: list[int] = []
        for i in wave:
            if started is not None:
                started(keys[i])
            job = prepare(evaluator, keys[i])  # a parent that failed in an earlier wave fails fast here
            if isinstance(job, StepResult):
                yield i, job
                continue
            jobs.append(job)
            where.append(i)
        for j, outcome in executor.map(jobs):
            yield where[j], absorb(evaluator, outcome)


def evaluate_round(evaluator: Evaluator, executor: Executor, proposals: Sequence[Sequence[str]], history: History,
                   budget: int, *, started: Callable[[SchemeKey], Any],
                   finished: Callable[[StepResult, Any], Observation],
                   interrupted: Callable[[list[Any], BaseException], None] | None = None,
                   time_up: Callable[[], bool] = lambda: False) -> list[Observation]:
    """One search round through ``executor``: the steps the serial round evaluates (``round_plan``, at most
    ``budget``), side by side in waves; returns the new observations in the serial round's order and adds them to
    ``history`` in that order at the end, so what a strategy sees does not depend on which worker finished first.

    ``started(scheme)`` runs before a step is prepared (write RUNNING; it returns a token, e.g. the evaluation
    id); ``finished(result, token)`` runs as each step arrives (write the result) and returns its observation.
    When the round is left by an exception (Ctrl-C), ``interrupted(tokens of the steps still running,
    exception)`` runs before it propagates.
    """
    before = {o.scheme for o in history}
    shadow = History(history.base, list(history.observations))  # the round's progress, for planning
    arrived: dict[SchemeKey, Observation] = {}
    while not time_up():
        batch = ready(round_plan(proposals, shadow, budget - len(arrived)), shadow)
        if not batch:
            break
        tokens: dict[SchemeKey, Any] = {}

        def start(scheme: SchemeKey, tokens: dict[SchemeKey, Any] = tokens) -> None:
            tokens[scheme] = started(scheme)

        try:
            for i, result in evaluate_batch(evaluator, batch, executor, started=start):
                arrived[batch[i]] = finished(result, tokens[batch[i]])
        except BaseException as e:
            if interrupted is not None:
                interrupted([t for s, t in tokens.items() if s not in arrived], e)
            raise
        for scheme in batch:
            shadow.add(arrived[scheme])
    new = [arrived[s] for s in serial_order(proposals, before, arrived)]
    for obs in new:
        history.add(obs)
    return new


def serial_order(proposals: Iterable[Sequence[str]], before: set[SchemeKey],
                 new: Mapping[SchemeKey, Observation]) -> list[SchemeKey]:
    """The order in which the serial round walks the ``new`` steps (``before``: evaluated in earlier rounds)."""
    order: list[SchemeKey] = []
    for scheme in proposals:
        for k in range(1, len(scheme) + 1):
            prefix = tuple(scheme[:k])
            if prefix in new:
                if prefix not in order:
                    order.append(prefix)
                if not new[prefix].ok:
                    break
            elif prefix not in before:
                break
    order += [s for s in new if s not in order]  # nothing in practice: every new step is some proposal's prefix
    return order


def serial_positions(proposals: Iterable[Sequence[str]]) -> dict[SchemeKey, int]:
    """Each prefix of the proposals with its place in the serial round's walk over them (first come first).

    The serial round evaluates its new steps in this order whatever else is evaluated or fails: a step's parent
    is COMPLETE, so the walk reaches the step at the first proposal it begins (``serial_order`` sorted by it).
    """
    place: dict[SchemeKey, int] = {}
    for scheme in proposals:
        for k in range(1, len(scheme) + 1):
            place.setdefault(tuple(scheme[:k]), len(place))
    return place


_PREFIX = "its prefix cannot be built: "
