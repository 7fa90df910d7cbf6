"""A search run and its set-up: ``search(config)`` checks the configuration, loads data and the model (training a
base model first when no weights are given), writes (or reclaims, on resume) the ``SearchRun``, then hands the
``Study`` to the loop (``search._optimize``).

A ``Study`` is what one session of a run holds (resolved config, evaluator, task, history, clock) and the only
writer of the run's records: each step is one RUNNING record, then COMPLETE, FAILED or INTERRUPTED, each in its own
transaction, with the store open only for that moment so that others may use an embedded store while models train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automc.errors import AutomcError, ValidationError
from automc.kb.states import State
from automc.search import config as conf
from automc.search._base import History, Observation, SchemeKey, charged_rows, search_rows
from automc.search.config import SearchConfig

if TYPE_CHECKING:
    from automc.kb import Store, TaskFeatures
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace
    from automc.search.step import EvalResult


# The rung of a search evaluation: 0 screens a proposal (its new steps without fine-tuning, BatchNorm re-estimated),
# 1 is the search fidelity (``--epochs``); final and baseline fine-tunes have none.
RUNGS = {"screen": 0, "search": 1}


@dataclass(frozen=True)
class SearchEvent:
    """Progress of a run, for a live display: ``kind`` is start, step, round, final or done."""

    kind: str
    run_id: str
    round: int
    done: int  # evaluated steps
    budget: float  # search compute in epoch-equivalents (steps when ``unit`` is "steps")
    best_val: float | None = None  # best validation accuracy at PR >= gamma so far
    front_size: int = 0  # evaluated schemes meeting the targets
    eta: float | None = None  # seconds, from the mean time per unit of budget
    message: str = ""
    spent: float = 0.0  # search compute so far, in epoch-equivalents
    unit: str = "compute"  # what ``budget`` counts: "compute" or "steps"


@dataclass(frozen=True)
class SearchResult:
    """A finished run: its best schemes (``report.ranked_rows``) and front (``report.front_rows``), what it cost
    and what it reused."""

    run_id: str
    state: str
    task: str
    front: list[dict[str, Any]]
    evaluations: int
    failed: int
    reuse: dict[str, Any]  # evaluations and tasks read from other tasks (zeros without reuse)
    seconds: float
    train_seconds: float
    store: str
    out: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    message: str = ""
    learnt: dict[str, Any] = field(default_factory=dict)  # the strategy's ``summary()``
    setup_seconds: float = 0.0  # data, base model, embeddings: before the first proposal
    best: list[dict[str, Any]] = field(default_factory=list)  # schemes meeting the targets, best validation first
    baseline: dict[str, Any] = field(default_factory=dict)  # the reference scheme vs the found model (report)
    compute: float = 0.0  # search compute of the evaluated steps, in epoch-equivalents
    budget: float = 0.0  # the run's budget: epoch-equivalents of compute (steps when ``budget_unit`` is "steps")
    budget_unit: str = "compute"

    @property
    def overhead(self) -> float:
        """Share of the search's wall time (after setup) spent outside method training: strategy, caching,
        measuring, store writes."""
        search = self.seconds - self.setup_seconds
        return max(0.0, 1.0 - self.train_seconds / search) if search > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` object."""
        keys = ("scheme", "evaluation_id", "params", "pr", "flops", "fr", "val_accuracy", "test_accuracy",
                "test_low", "test_high", "fidelity")
        return {"run_id": self.run_id, "state": self.state, "task": self.task,
                "best": [{k: row.get(k) for k in keys} for row in self.best],
                "front": [{k: row.get(k) for k in keys} for row in self.front], "evaluations": self.evaluations,
                "failed": self.failed, "reuse": dict(self.reuse), "seconds": self.seconds,
                "train_seconds": self.train_seconds, "setup_seconds": self.setup_seconds, "overhead": self.overhead,
                "compute": self.compute, "budget": self.budget, "budget_unit": self.budget_unit,
                "store": self.store, "out": str(self.out) if self.out else None, "files": dict(self.files),
                "baseline": dict(self.baseline)}


class SearchInterrupted(AutomcError):
    """Ctrl-C stopped a run after writing what it had; ``str()`` says how to resume it."""

    def __init__(self, run_id: str, command: str) -> None:
        self.run_id, self.command = run_id, command
        super().__init__(f"search run {run_id} interrupted; resume with: {command}")


@contextlib.contextmanager
def _opened(uri: str) -> Iterator[Store]:
    """The store, open only for the duration of one write or read (an embedded store has one writer at a time)."""
    from automc.kb import open_store

    with open_store(uri) as s:
        yield s


Token = tuple[str, float]  # a step in flight: its evaluation id and when it started (monotonic clock)


@dataclass
class Study:
    """One session of a search run: resolved config, evaluator, task features, history and the clock."""

    id: str
    cfg: SearchConfig
    store: str
    task: TaskFeatures
    evaluator: Evaluator
    space: SearchSpace
    history: History
    config_json: dict[str, Any]
    started: float
    seconds_before: float  # wall time of earlier sessions of this run
    progress: Callable[[SearchEvent], None] | None
    full_data: Any  # all the training images (the search may use a fraction of them)
    next_step: int = 0  # the run-order index the next evaluation gets
    round: int = 0  # the round to run next
    strategy_state: dict[str, Any] = field(default_factory=dict)  # stored by the last finished round
    step_seconds: list[float] = field(default_factory=list)
    _session_spent: float = 0.0  # compute of this session's steps (its ETA's rate)
    in_round: int = 0  # steps of the current round already written (the history gets them at its end)
    deadline: float | None = None
    spent: float = 0.0  # search compute of the run's evaluated steps, in epoch-equivalents (``compress.compute``)

    @contextlib.contextmanager
    def opened(self) -> Iterator[Store]:
        """The run's store, open for one write or read."""
        with _opened(self.store) as s:
            yield s

    @property
    def done(self) -> int:
        return len(self.history)

    @property
    def seconds(self) -> float:
        """Wall time of the run so far, earlier sessions included."""
        return self.seconds_before + time.monotonic() - self.started

    def time_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def steps_allowed(self, arrived: int = 0) -> int:
        """How many more steps may run (those in flight included) with ``arrived`` steps of this round written but
        not yet in the history: none once the compute budget is spent, else up to the step cap (``config.step_cap``).
        The one place the budget is checked: a run overshoots its compute by at most the steps in flight."""
        cfg = self.cfg
        cap = conf.step_cap(cfg)
        left = conf.MAX_BUDGET if cap is None else cap - self.done - arrived
        if cfg.budget_unit != "steps" and self.spent >= float(cfg.budget):
            left = 0
        return max(0, left)

    def emit(self, kind: str, round_: int, message: str = "") -> None:
        if self.progress is None:
            return
        from automc.search.objective import ranked

        fr = ranked(self.history.complete(), self.cfg.target_pr, self.cfg.target_fr)
        best = fr[0].val_accuracy if fr else None
        done = self.done + self.in_round
        steps = self.cfg.budget_unit == "steps"
        used = done if steps else self.spent
        # seconds per unit of budget (step or epoch-equivalent) of this session's steps
        rate = sum(self.step_seconds) / (len(self.step_seconds) if steps else self._session_spent) if (
            self.step_seconds and (steps or self._session_spent > 0)) else None
        eta = None if rate is None else rate * max(0.0, float(self.cfg.budget) - used)
        self.progress(SearchEvent(kind, self.id, round_, done, float(self.cfg.budget), best, len(fr), eta, message,
                                  self.spent, str(self.cfg.budget_unit)))

    # -- the run's records -------------------------------------------------------------------------------------
    def begin(self, scheme: SchemeKey, *, fidelity: str, round_: int, task: Any = None,
              prediction: Mapping[str, Any] | None = None) -> Token:
        """Write the RUNNING evaluation of ``scheme`` (its parent is in the history) at the next run-order index,
        with the run's heartbeat and the strategy's ``prediction`` for it (JSON); returns the token ``end`` and
        ``cut_short`` take."""
        from automc.catalog import Scheme
        from automc.search.step import step_seed

        cfg, task = self.cfg, task or self.evaluator.task
        full = self.space.to_scheme(scheme)
        final = fidelity in ("final", "baseline")  # the baseline gets the final fine-tune's budget
        epochs = 0.0 if fidelity == "screen" else float(cfg.final_epochs if final else cfg.epochs)
        extra = {"fidelity": fidelity, "round": round_, "parent": Scheme(full.strategies[:-1]).id,
                 "epochs": epochs, "step": self.next_step, "rung": RUNGS.get(fidelity),
                 "data_fraction": 1.0 if final else float(cfg.data_fraction), "seed": step_seed(int(cfg.seed), scheme),
                 "val_source": task.data.sources.get("val")}
        if prediction:
            extra["prediction"] = json.dumps(dict(prediction))
        self.next_step += 1
        t = time.monotonic()
        with self.opened() as s:
            eval_id = s.start_evaluation(self.task, full, target_pr=float(cfg.target_pr), search_run=self.id,
                                         device=str(task.device), extra=extra)
            # the heartbeat (another host tells a live run from a dead one by it) and the wall time so far, so that
            # a killed session's seconds still count after a resume
            s.update_run(self.id, seconds=self.seconds)
        return eval_id, t

    def end(self, token: Token, result: EvalResult, round_: int) -> Observation:
        """Write a finished evaluation (one transaction); returns what the strategy sees of it."""
        eval_id, t = token
        with self.opened() as s:
            s.end_evaluation(eval_id, result.record())
        if result.fidelity in ("search", "screen"):  # what the budget counts (``charged_rows``)
            self.step_seconds.append(time.monotonic() - t)
            self.spent += float(result.compute or 0.0)
            self._session_spent += float(result.compute or 0.0)
        return result.observation(round_, eval_id)

    def cut_short(self, tokens: list[Token], e: BaseException) -> None:
        """Mark evaluations in flight INTERRUPTED (evaluated again on resume) for Ctrl-C or a disk error of the
        tool's own files, else FAILED with the error."""
        from automc.errors import DiskError, StoreError

        if not tokens or (isinstance(e, DiskError) and isinstance(e, StoreError)):
            return  # nothing in flight, or the store cannot record anything now (resume marks these stale)
        # on a disk error the store may sit on the full disk too
        guard = contextlib.suppress(AutomcError) if isinstance(e, DiskError) else contextlib.nullcontext()
        with guard, self.opened() as s:
            for eval_id, _ in tokens:
                if isinstance(e, KeyboardInterrupt | DiskError):
                    s.interrupt_evaluation(eval_id, "interrupted" + (f": {e}" if isinstance(e, DiskError) else ""))
                else:
                    s.fail_evaluation(eval_id, f"{type(e).__name__}: {e}")

    def end_round(self, round_: int, strategy_state: Mapping[str, Any]) -> None:
        """Store the strategy's state after a round (what a resume continues from)."""
        with self.opened() as s:
            s.update_run(self.id, round=round_, strategy_state=dict(strategy_state), seconds=self.seconds)

    def stop(self, state: State, error: str = "") -> None:
        """Mark the run ``state`` (INTERRUPTED or FAILED) with what is in flight: one write."""
        with self.opened() as s:
            s.interrupt_running(self.id, error or "interrupted")
            s.update_run(self.id, state=state, error=error[:2000], seconds=self.seconds)


# -- set-up ------------------------------------------------------------------------------------------------------

def search(config: SearchConfig, *, progress: Callable[[SearchEvent], None] | None = None) -> SearchResult:
    """Run (or resume) a search; returns the front and what it cost. Never prints.

    Raises ``ValidationError`` / ``NotFoundError`` for bad input before anything is written, and
    ``SearchInterrupted`` after Ctrl-C (the run is INTERRUPTED and can be resumed).
    """
    from automc._interrupt import catching
    from automc.search._optimize import optimize

    t0 = time.monotonic()
    with catching():  # a Ctrl-C that a library swallows still stops the run (``_interrupt.check``)
        study = open_study(config, progress, t0)
        return optimize(study)


def open_study(config: SearchConfig, progress: Callable[[SearchEvent], None] | None = None,
               t0: float | None = None) -> Study:
    """Resolve and check the configuration, sweep stale records, claim or create the run, and set it up (data,
    model, evaluator, history); ``search()`` then runs it. Raises ``ValidationError`` before anything is written."""
    from automc.kb import default_store_uri, open_store

    t0 = time.monotonic() if t0 is None else t0
    conf.check(config)
    conf.check_gpus(config)  # workers and their GPUs are per session: what is given is what is used
    store_uri = config.store or default_store_uri()
    stored, done, spent = None, 0, 0.0
    if config.resume:
        with open_store(store_uri, create=False) as s:
            stored = s.load_run(config.resume)
            rows = s.run_evaluations(stored.id)
            done, spent = len(search_rows(rows)), spent_compute(charged_rows(rows))
    cfg = conf.resolve(config, stored.config.get("config") if stored else None)
    if stored is not None:
        _check_budget_kept(stored, cfg, done, spent)
    ident = conf.identity(cfg)
    if stored is not None:
        conf.compare_identity(stored.id, stored.config.get("identity", {}), ident)
    run_id = stored.id if stored else uuid.uuid4().hex[:12]
    conf.check_paths(cfg, conf.run_dir(cfg, run_id))
    if stored is not None:
        with _opened(store_uri) as s:
            s.fail_stale()  # records of processes that died since the store was last used
            s.claim_run(stored.id)  # atomic: of two resumes of one run, the second is refused here
    try:
        return _start(run_id, cfg, ident, store_uri, stored, progress, t0)
    except BaseException:
        if stored is not None:  # give the run back as it was: nothing of this session ran
            with contextlib.suppress(Exception), _opened(store_uri) as s:
                back = stored.state if stored.state in (State.COMPLETE, State.FAILED) else State.INTERRUPTED
                s.update_run(stored.id, state=back, error=stored.error)
        raise


def spent_compute(steps: list[Mapping[str, Any]]) -> float:
    """Search compute of a run's evaluated steps and screenings (``charged_rows``), in epoch-equivalents; a step
    without a record of it (cut short with its worker) counts 0."""
    return sum(float(r.get("compute") or 0.0) for r in steps)


def _check_budget_kept(stored: Any, cfg: SearchConfig, done: int, spent: float) -> None:
    """A resumed run's budget and step cap must not be below what it has already used."""
    old = stored.config.get("config") or {}
    if cfg.budget_unit == "steps" and int(cfg.budget) < done:
        raise ValidationError(f"search run {stored.id} has already evaluated {done} steps; a budget below that "
                              f"cannot be kept (give at least {done}, or leave --budget out to keep "
                              f"{old.get('budget', stored.budget)})", field="--budget")
    if cfg.budget_unit != "steps" and float(cfg.budget) < spent:
        raise ValidationError(f"search run {stored.id} has already spent {spent:.4g} epoch-equivalents; a budget "
                              f"below that cannot be kept (give at least {spent:.4g}, or leave --budget out to keep "
                              f"{old.get('budget')})", field="--budget")
    if cfg.budget_unit != "steps" and cfg.max_steps is not None and int(cfg.max_steps) < done:
        raise ValidationError(f"search run {stored.id} has already evaluated {done} steps; a cap below that cannot "
                              f"be kept (give at least {done}, or leave --max-steps out to keep "
                              f"{old.get('max_steps')})", field="--max-steps")


def _device(name: str | None) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValidationError("CUDA is not available on this machine; use --device cpu", field="--device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load_data(cfg: SearchConfig, fraction: float, device: Any) -> Any:
    """The task's data with three disjoint parts (``automc.compress.data.load_data``); ``fraction`` samples only
    the training part, so validation and test images are the same at every fidelity."""
    from automc.compress.data import load_data

    return load_data(cfg.data, val_data=cfg.val_data, val_from=str(cfg.val_from), fraction=fraction,
                     seed=int(cfg.seed), device=device)


def _base_model(cfg: SearchConfig, data: Any, device: Any, run_dir: Path) -> Any:
    """The model to compress: the given weights, or a base trained once and kept in the run's directory."""
    import torch

    from automc._disk import writing
    from automc.compress.builtin import train_base
    from automc.compress.models import load_weights, model_for_data

    net = model_for_data(str(cfg.model), data, cfg.weights, width=cfg.width)
    if cfg.weights:
        return net
    path = run_dir / "base.pt"
    if path.is_file():
        return load_weights(net, path)
    train_base(net, data, float(cfg.train_epochs), batch_size=int(cfg.batch_size), seed=int(cfg.seed), device=device)
    tmp = path.with_suffix(".tmp")
    with writing(path):  # a full disk is one line naming it, not torch's "enforce fail" traceback
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), tmp)
        tmp.replace(path)  # a killed training leaves no half-written base behind
    return net


def _start(run_id: str, cfg: SearchConfig, ident: dict[str, Any], store_uri: str, stored: Any,
           progress: Callable[[SearchEvent], None] | None, t0: float) -> Study:
    """Load data and model, measure the base, write (or reopen) the SearchRun, rebuild the history."""
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.identity import task_features
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace

    torch.manual_seed(int(cfg.seed))
    device = _device(cfg.device)
    run_dir = conf.run_dir(cfg, run_id)
    # the full training part trains a base model, sets the task's features and serves the final fine-tune
    full = _load_data(cfg, 1.0, device)
    data = full if cfg.data_fraction >= 1 else _load_data(cfg, float(cfg.data_fraction), device)
    net = _base_model(cfg, full, device, run_dir)
    budget = TrainBudget(epochs=float(cfg.epochs), batch_size=int(cfg.batch_size), lr=float(cfg.lr))
    space = SearchSpace(max_length=int(cfg.max_length))
    evaluator = Evaluator(net, Task(data, float(cfg.target_pr), budget, device, int(cfg.seed)),
                          cache_dir=run_dir / "cache", cache_bytes=int(cfg.cache_bytes), seed=int(cfg.seed),
                          space=space, data_fraction=float(cfg.data_fraction))
    base = evaluator.base().record()
    # the same Task as ``automc compress --store`` of this model, weights and data (compress.identity)
    features = task_features(str(cfg.model), str(cfg.data), full, val_accuracy=float(base["val_accuracy"]),
                             params=float(base["params"]), flops=float(base["flops"]))
    config_json = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("resume", "store")},
                   "identity": ident, "base": base, "run_dir": str(run_dir),
                   "setup_seconds": float(stored.config.get("setup_seconds") or 0.0) if stored else 0.0}
    if stored is not None and stored.config.get("baseline"):  # the reference scheme chosen by an earlier session
        config_json["baseline"] = stored.config["baseline"]
    with _opened(store_uri) as s:
        if stored is None:
            s.fail_stale()  # records of processes that died since the store was last used
            s.create_run(run_id=run_id, algorithm=str(cfg.strategy), task=features, seed=int(cfg.seed),
                         target_pr=float(cfg.target_pr), budget=conf.step_cap(cfg) or 0, config=config_json,
                         fingerprint=conf.fingerprint(ident))
        else:
            s.interrupt_running(run_id, f"stale: the process running it ({stored.pid} on {stored.host}) died")
            s.update_run(run_id, state=State.RUNNING, budget=conf.step_cap(cfg) or 0, config=config_json, error="",
                         finished=None)
        rows = s.run_evaluations(run_id) if stored is not None else []
    base_obs = Observation((), State.COMPLETE, val_accuracy=base.get("val_accuracy"), pr=0.0, fr=0.0,
                           params=base.get("params"), flops=base.get("flops"), round=-1)
    history = History.from_rows(base_obs, rows)
    study = Study(run_id, cfg, store_uri, features, evaluator, space, history, config_json, t0,
                  stored.seconds if stored else 0.0, progress, full,
                  deadline=None if cfg.time_limit is None else t0 + float(cfg.time_limit))
    study.spent = spent_compute(charged_rows(rows))
    study.next_step = 1 + max((int(r["step"]) for r in rows if r.get("step") is not None), default=len(rows) - 1)
    if stored is not None:
        study.round = stored.round + 1  # the round after the last whose strategy state was stored
        study.strategy_state = dict(stored.strategy_state or {})
    return study
