"""Where the steps of a search run: in this process (``SerialExecutor``) or as Ray tasks (``RayExecutor``), on every
GPU of a machine or a cluster. One interface: ``submit`` a ``StepJob``, ``wait`` for the next ``StepOutcome``.

The driver (``search._optimize``) is the only writer: workers never open the store or the model cache. The task
(data, budget), the base model and its measurement travel once per run, as a ``WorkerContext`` in Ray's object
store. Each step is seeded from the run's seed and the scheme's content hash, so an executor changes when a step
runs, never what it computes: on the CPU with the same torch threads both executors give the same results. A Ray
worker process that dies (killed, out of memory, its node lost) costs one retry on another worker (Ray's
``max_retries``), then the step is FAILED saying so; an exception of the step itself is FAILED at once, never
retried. ``ray`` is imported only by ``RayExecutor``.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from automc.errors import reason
from automc.search.step import StepJob, StepOutcome, WorkerContext, execute, worker_name

if TYPE_CHECKING:
    from automc.search.evaluator import Evaluator


class Executor(Protocol):
    """Runs submitted jobs, at most ``workers`` at a time; ``wait`` returns the next one to finish (any order)."""

    workers: int

    def submit(self, job: StepJob) -> None: ...

    def wait(self) -> StepOutcome: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs jobs one after another in this process (``--workers 1``: no Ray), with ``threads`` torch threads."""

    workers = 1

    def __init__(self, context: WorkerContext, *, threads: int | None = None) -> None:
        self.context = context
        self.threads = threads
        self._queue: collections.deque[StepJob] = collections.deque()

    def submit(self, job: StepJob) -> None:
        self._queue.append(job)

    def wait(self) -> StepOutcome:
        """Run the oldest submitted job here and return its outcome."""
        import torch

        job = self._queue.popleft()
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            return execute(job, self.context)
        finally:
            torch.set_num_threads(before)

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self.cancel()

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
        self._pending: dict[Any, StepJob] = {}
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
                                      f"{reason(e)}{hint}", field="--ray-address" if address else "--workers"
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

    def submit(self, job: StepJob) -> None:
        """Start ``job`` as a Ray task (the caller keeps at most ``workers`` in flight)."""
        ref = self._task.remote(job, [self._context], self._token, self.threads)
        self._pending[ref] = job

    def wait(self) -> StepOutcome:
        """The next job to finish; polls every second, so that Ctrl-C is seen while steps run."""
        import ray

        while True:
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=1.0)
            if done:
                ref = done[0]
                return self._collect(ref, self._pending.pop(ref))

    def cancel(self) -> None:
        """Cancel the jobs still in flight (Ctrl-C, a failed run)."""
        import ray

        for ref in self._pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        self._pending.clear()

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
            return self.context.failed(job.scheme, reason(cause), time.perf_counter() - t0)
        except RayError as e:  # the worker process or its node died, on every attempt
            attempts = self.max_retries + 1
            return self.context.failed(job.scheme, f"worker lost on {attempts} attempt{'s' * (attempts > 1)}: "
                                                   f"{reason(e)}", time.perf_counter() - t0)

    def close(self) -> None:
        """Shut down the Ray instance this executor started (a joined or pre-existing one stays)."""
        if self._owned:
            import ray

            self._owned = False
            ray.shutdown()
        self._pending.clear()

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
        return SerialExecutor(evaluator.context(portable=False), threads=threads)
    return RayExecutor(evaluator.context(), workers=workers, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker, address=address, threads=threads)
