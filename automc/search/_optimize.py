"""The search loop: ask the strategy for a round of schemes, run their missing steps through the executor, tell the
strategy what came back; then the final fine-tune, the same fine-tune of a reference scheme (``--baseline``) and the
report (``search.final``).

One round walk (``_walk``) gives the steps a round evaluates and their order: each proposal's prefixes that are not
evaluated yet, a known failure ending that proposal. Steps whose parent is evaluated are submitted, at most one per
worker and never past the budget (the one budget check, ``_ready`` with ``Study.steps_allowed``: a step starts
only while the run's spent compute is below its budget and within ``--max-steps``); after each arrival the walk is
taken again, so a failure drops only its own extensions and lets later proposals' steps into the budget. The
executor changes when a step runs, not which steps run or what they compute: ``--workers 1`` (``SerialExecutor``) and
``--workers N`` (Ray) evaluate the same steps, write each one as it arrives, stamped with its place in the walk, and
hand the strategy the round in the walk's order.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from automc._interrupt import check as check_interrupt
from automc.catalog import scheme_text
from automc.kb.states import State
from automc.search._base import Context, History, Observation, SchemeKey, round_rng
from automc.search.step import EvalResult

if TYPE_CHECKING:
    from automc.search.executors import Executor
    from automc.search.study import SearchResult, Study, Token


def optimize(study: Study) -> SearchResult:
    """Run rounds until the budget, the time or the proposals run out, fine-tune the best schemes and finish.

    Ctrl-C marks the run INTERRUPTED and raises ``SearchInterrupted``; a disk error of the tool's own files stops
    it the same way, naming the file; any other error marks it FAILED and propagates.
    """
    from automc.search import final

    executor = None
    try:
        strategy, reuse = _strategy(study)
        executor = _executor(study)
        message = _rounds(study, strategy, executor)
        final.fine_tune(study)
        final.baseline(study)
        result = final.finish(study, reuse, message, strategy.summary())
        return dataclasses.replace(result, compute=study.spent, budget=float(study.cfg.budget),
                                   budget_unit=str(study.cfg.budget_unit))
    except BaseException as e:
        err = _stopped(study, e)
        if err is e:
            raise
        raise err from (None if isinstance(e, KeyboardInterrupt) else e)
    finally:
        if executor is not None:
            executor.close()


def _strategy(study: Study) -> tuple[Any, dict[str, Any]]:
    """The run's strategy with its stored state, and what reuse read; setup time is recorded as such."""
    import time

    from automc.search import STRATEGIES
    ctx, reuse = _context(study)
    study.config_json["reuse"] = reuse
    # setup (data, training the base model, measuring it, an embedding refresh) is not search overhead
    study.config_json["setup_seconds"] = float(study.config_json.get("setup_seconds") or 0.0) + (
        time.monotonic() - study.started)
    with study.opened() as s:
        s.update_run(study.id, config=study.config_json)
    strategy = STRATEGIES[str(study.cfg.strategy)](ctx)
    if study.strategy_state:
        strategy.load_state_dict(study.strategy_state)
    return strategy, reuse


def _context(study: Study) -> tuple[Context, dict[str, Any]]:
    """The strategy's context; with reuse, the prior steps of other tasks, transfer schemes and embeddings."""
    from automc.search import STRATEGIES
    from automc.search.reuse import ensure_embeddings, load_prior, task_vector

    cfg = study.cfg
    info: dict[str, Any] = {"evaluations": 0, "tasks": 0}
    prior: tuple = ()
    transfer: tuple = ()
    with study.opened() as s:
        # without reuse, the stored embeddings as they are: no refresh, nothing learnt from other tasks
        embeddings, embed_info = ensure_embeddings(s, refresh=bool(cfg.reuse))
        if cfg.reuse:
            p = load_prior(s, study.task.id, task=study.task, target_pr=float(cfg.target_pr), space=study.space)
            prior, transfer = tuple(p.records), tuple(p.transfer)
            info = {"evaluations": int(p.evaluations), "tasks": int(p.tasks), "transfer": len(p.transfer),
                    "experience": [scheme_text(k) for k in p.experience], "embeddings": embed_info}
    layers = None
    if STRATEGIES[str(cfg.strategy)].per_layer:  # the base model's prunable layers, counted without training
        from automc.compress.layerwise import PolicySpace

        ev = study.evaluator
        layers = PolicySpace(ev.base_model, ev.task.data.example_input())
    ctx = Context(space=study.space, target_pr=float(cfg.target_pr), seed=int(cfg.seed), task=study.task,
                  layers=layers,
                  target_fr=None if cfg.target_fr is None else float(cfg.target_fr),
                  task_vector=task_vector(study.task, float(cfg.target_pr)), embeddings=embeddings, prior=prior,
                  transfer=transfer, per_round=int(cfg.per_round), options=dict(cfg.strategy_options or {}))
    return ctx, info


def _executor(study: Study) -> Executor:
    """``SerialExecutor`` for one local worker, else Ray workers (sharing the GPU evenly by default)."""
    from automc.search.executors import make_executor

    cfg = study.cfg
    gpus = cfg.gpus_per_worker
    if gpus is None:
        gpus = 1.0 / int(cfg.workers) if study.evaluator.task.device.type == "cuda" else 0.0
    return make_executor(study.evaluator, workers=int(cfg.workers or 1), gpus_per_worker=float(gpus),
                         address=cfg.ray_address)


def _rounds(study: Study, strategy: Any, executor: Executor) -> str:
    """Ask, evaluate, tell, store the strategy's state; returns why the loop stopped before the budget ("" if not)."""
    cfg = study.cfg
    spent = (f"{study.done}/{int(cfg.budget)} steps" if cfg.budget_unit == "steps" else
             f"{study.spent:.3g}/{float(cfg.budget):g} epoch-equivalents of compute ({study.done} steps)")
    study.emit("start", study.round, f"task {study.task.id}; {spent} already spent")
    while study.steps_allowed() > 0:
        if study.time_up():
            return "time limit reached"
        asked, n = strategy.round_size(min(int(cfg.per_round), study.steps_allowed()), int(cfg.screen or 1))
        raw = strategy.propose(study.history, asked, round_rng(int(cfg.seed), study.round))
        proposals = _promoted(study, raw, n, screen_all=strategy.learns_from_screen,
                              screen_images=strategy.screen_images(), executor=executor)
        new = _round(study, executor, proposals, strategy.predictions(study.history, proposals))
        screened_out = bool(raw) and not proposals  # rung 0 dropped them all: the next round proposes anew
        if not new and not screened_out and not study.time_up() and study.steps_allowed() > 0:
            return "the strategy proposed nothing new: the search space is exhausted"
        strategy.observe(study.history, new)
        study.end_round(study.round, strategy.state_dict())
        study.emit("round", study.round)
        study.round += 1
    return ""


def _promoted(study: Study, proposals: list[SchemeKey], n: int, *, screen_all: bool = False,
              screen_images: int | None = None, executor: Executor | None = None) -> list[SchemeKey]:
    """The ``n`` proposals that go to the search fidelity: with ``--screen`` > 1 (or ``screen_all``: a strategy that
    learns from rung 0), the best ``n`` by their rung-0 validation accuracy (``_screen``: through the executor, each
    written as it finishes, added to ``History.screened`` and read back on resume), in the strategy's order; one that
    failed its screen, was not screened (budget or time ran out) or whose rung-0 PR or FR misses the targets is never
    trained. Without screening, all of them; but with ``--target-fr`` every proposal is screened (its pruned shapes
    give its FLOPs before any fine-tune) and one that misses it is dropped. ``screen_images``: the validation images
    of a screen (all when None; the strategy's choice, ``SearchStrategy.screen_images``)."""
    if not screen_all and study.cfg.target_fr is None and (int(study.cfg.screen or 1) <= 1 or len(proposals) <= n):
        return proposals
    from automc.catalog import scheme_key
    from automc.kb.states import EVALUATED
    from automc.search.objective import meets

    with study.opened() as s:
        known = {scheme_key(r["scheme"]): r for r in s.run_evaluations(study.id)
                 if r.get("fidelity") == "screen" and r.get("state") in EVALUATED}
    rows = _screen(study, executor, [tuple(k) for k in proposals if tuple(k) not in known], screen_images)
    score: list[float] = []
    for key in proposals:
        row = known.get(tuple(key)) or rows.get(tuple(key))
        ok = row is not None and row["state"] == State.COMPLETE and row.get("val_accuracy") is not None
        # the pruned shapes are built at rung 0: a proposal whose FLOPs miss --target-fr is not trained
        ok = ok and meets(row.get("pr"), row.get("fr"), float(study.cfg.target_pr), study.cfg.target_fr)
        score.append(float(row["val_accuracy"]) if ok else float("-inf"))
    best = [i for i in sorted(range(len(proposals)), key=lambda i: (-score[i], i))[:n] if score[i] > float("-inf")]
    return [proposals[i] for i in sorted(best)]


def _screen(study: Study, executor: Executor | None, keys: Sequence[SchemeKey], screen_images: int | None
            ) -> dict[SchemeKey, dict[str, Any]]:
    """Screen ``keys`` through ``executor`` (at most one per worker in flight, each started only while the budget
    and time allow, in order), writing each as it finishes; their results by scheme. They join
    ``History.screened`` in ``keys``' order, whatever order they finished in, so that ``--workers`` changes when a
    screening runs, not what a strategy learns from it."""
    from automc.search.step import as_screen

    if executor is None:
        from automc.search.executors import SerialExecutor

        executor = SerialExecutor(study.evaluator.context(portable=False))
    pending = list(keys)
    running: dict[SchemeKey, Token] = {}
    done: dict[SchemeKey, tuple[EvalResult, Observation]] = {}

    def finish(key: SchemeKey, result: EvalResult) -> None:
        result = result if result.fidelity == "screen" else as_screen(result)
        done[key] = (result, study.end(running.pop(key), result, study.round))
        study.emit("screen", study.round, f"{'ok' if result.ok else 'FAIL'} {scheme_text(key)} (rung 0)")

    try:
        while True:
            while pending and len(running) < executor.workers and study.steps_allowed() > 0 \
                    and not study.time_up():
                key = pending.pop(0)
                running[key] = study.begin(key, fidelity="screen", round_=study.round)
                job = study.evaluator.prepare_screen(key, val_images=screen_images)
                if isinstance(job, EvalResult):
                    finish(key, job)
                else:
                    executor.submit(job)
            if not running:
                break
            outcome = executor.wait()
            check_interrupt()
            finish(tuple(outcome.result.scheme), outcome.result)
    except BaseException as e:
        executor.cancel()
        study.cut_short(list(running.values()), e)
        raise
    finally:
        study.history.screened.extend(done[k][1] for k in keys if k in done)
    return {k: {"state": r.state, "val_accuracy": r.val_accuracy, "pr": r.pr, "fr": r.fr}
            for k, (r, _) in done.items()}


def _walk(proposals: Iterable[Sequence[str]], history: History | None = None) -> Iterator[SchemeKey]:
    """The round's steps in the order a one-worker search evaluates them: each proposal's prefixes not evaluated
    yet (in ``history``), first come first, a known failure ending that proposal."""
    seen: set[SchemeKey] = set()
    for scheme in proposals:
        for k in range(1, len(scheme) + 1):
            prefix = tuple(scheme[:k])
            known = history.get(prefix) if history is not None else None
            if known is not None:
                if not known.ok:
                    break
                continue
            if prefix not in seen:
                seen.add(prefix)
                yield prefix


def _ready(proposals: Sequence[SchemeKey], shadow: History, budget: int, running: Iterable[SchemeKey]) -> list[
        SchemeKey]:
    """The walk's next ``budget`` steps (those running included) whose parent is evaluated and that do not run yet:
    what may start now if every step still running succeeds."""
    running = set(running)
    plan = itertools.islice(_walk(proposals, shadow), max(0, budget))
    return [s for s in plan if s not in running and s[:-1] in shadow]


def _round(study: Study, executor: Executor, proposals: Sequence[SchemeKey],
           predictions: Mapping[SchemeKey, Mapping[str, Any]] | None = None) -> list[Observation]:
    """Evaluate the round's steps through ``executor`` (see the module docstring); returns the new observations
    in the walk's order and adds them to the history in that order. A step's entry in ``predictions`` (the
    strategy's, made before it ran) is stored on its evaluation."""
    place = {key: i for i, key in enumerate(_walk(proposals))}
    first = study.next_step
    shadow = History(study.history.base, list(study.history.observations))  # the round's progress
    running: dict[SchemeKey, Token] = {}
    arrived: dict[SchemeKey, Observation] = {}
    study.in_round = 0
    try:
        while True:
            while len(running) < executor.workers and not study.time_up():
                ready = _ready(proposals, shadow, study.steps_allowed(len(arrived)), running)
                if not ready:
                    break
                key = ready[0]
                study.next_step = first + place[key]
                running[key] = study.begin(key, fidelity="search", round_=study.round,
                                           prediction=(predictions or {}).get(key))
                job = study.evaluator.prepare(key)
                if isinstance(job, EvalResult):  # nothing to run: the base, a refused or a known-failed step
                    _arrive(study, job, running, shadow, arrived)
                else:
                    executor.submit(job)
            if not running:
                break
            outcome = executor.wait()
            check_interrupt()  # a Ctrl-C swallowed inside the step's libraries cuts the step short
            _arrive(study, study.evaluator.absorb(outcome), running, shadow, arrived)
    except BaseException as e:
        executor.cancel()
        study.cut_short(list(running.values()), e)
        raise
    finally:
        study.in_round = 0
        study.next_step = first + 1 + max((place[k] for k in (*arrived, *running)), default=-1)
    new = sorted(arrived.values(), key=lambda o: place[o.scheme])
    for obs in new:
        study.history.add(obs)
    return new


def _arrive(study: Study, result: EvalResult, running: dict[SchemeKey, Token], shadow: History,
            arrived: dict[SchemeKey, Observation]) -> None:
    """Write a finished step (one transaction) and count it in the round."""
    key = tuple(result.scheme)
    obs = study.end(running[key], result, study.round)
    del running[key]
    shadow.add(obs)
    arrived[key] = obs
    study.in_round = len(arrived)
    study.emit("step", study.round, f"{'ok' if obs.ok else 'FAIL'} {scheme_text(key)}")


def _stopped(study: Study, e: BaseException) -> BaseException:
    """Mark the run as the error left it and return what to raise: ``SearchInterrupted`` for Ctrl-C, the disk
    error naming the file, the free space and the resume command, or ``e`` itself (the run FAILED)."""
    import contextlib

    from automc.errors import AutomcError, StoreError
    from automc.search.config import resume_command
    from automc.search.study import SearchInterrupted

    if isinstance(e, KeyboardInterrupt):
        study.stop(State.INTERRUPTED)
        return SearchInterrupted(study.id, resume_command(study.id, study.store))
    disk = _disk_failure(study, e)
    if disk is None:
        with contextlib.suppress(Exception):
            study.stop(State.FAILED, f"{type(e).__name__}: {e}")
        return e
    if not isinstance(disk, StoreError):
        with contextlib.suppress(AutomcError):  # the store may sit on the full disk too
            study.stop(State.INTERRUPTED, f"interrupted: {disk}")
    import errno

    fix = "free space" if disk.errno in (errno.ENOSPC, errno.EDQUOT) else "fix it"
    return type(disk)(disk.path, free=disk.free, problem=disk.problem, errno=disk.errno, mount=disk.mount,
                      then=f"{fix} and resume with: {resume_command(study.id, study.store)}")


def _disk_failure(study: Study, e: BaseException) -> Any:
    """The ``DiskError`` that stopped the run: raised by a write of the tool's own files (store, model cache), or a
    disk failure of its outputs (report, models under ``--out``) that reached the loop as it was; else None."""
    from automc._disk import disk_error
    from automc.errors import DiskError

    if isinstance(e, DiskError):
        return e
    if isinstance(e, OSError | RuntimeError):
        return disk_error(e, getattr(e, "filename", None) or study.cfg.out)
    return None
