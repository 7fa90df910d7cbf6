"""The search loop (``automc search``): propose, evaluate step by step, write every step back, resume.

``search(config)`` checks everything it can before any work (bad input is one ``ValidationError`` and nothing
is written), loads data and model (training a base model first when no weights are given), writes a RUNNING
``SearchRun``, then runs rounds: the strategy proposes schemes, the loop evaluates each missing prefix and the
scheme itself (one budget unit per step; each step is one RUNNING record, then COMPLETE or FAIL, each in its own
transaction) and stores the strategy's state after the round. At the end the front's top schemes are fine-tuned
again at full fidelity, the run is marked COMPLETE with its front, and the report is written. Ctrl-C marks the
run INTERRUPTED and raises ``SearchInterrupted``; ``resume=RUN_ID`` rebuilds the history from the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import numbers
import os
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automc._interrupt import check as check_interrupt
from automc.catalog import scheme_key, scheme_text
from automc.errors import AutomcError, ValidationError
from automc.search._base import Context, History, Observation, SchemeKey, round_rng

if TYPE_CHECKING:
    from automc.kb import Store, TaskFeatures

DEFAULTS: dict[str, Any] = {
    "target_pr": 0.4, "budget": 60, "epochs": 1.0, "final_epochs": 10.0, "data_fraction": 1.0, "val_from": "test",
    "seed": 0, "strategy": "progressive", "per_round": 10, "max_length": 5, "reuse": True, "top_k": 3,
    "batch_size": 128, "lr": 0.01, "cache_bytes": 2 * 1024**3, "train_epochs": 10.0, "workers": 1,
}
# What defines a run: resuming with any of these changed would mix two experiments in one history.
IDENTITY = ("model", "weights", "train_epochs", "width", "data", "val_data", "val_from", "target_pr", "data_fraction",
            "epochs", "seed", "strategy", "max_length", "reuse", "batch_size", "lr")
# A step takes seconds to minutes: more steps than this is a typo (and a larger number overflows the store's int64).
MAX_BUDGET = 100_000
MAX_SEED = 2**32 - 1  # what numpy and torch seed generators take
MAX_LENGTH = 50  # strategies in one scheme; the strategies draw lengths with int64 generators


@dataclass(frozen=True)
class SearchConfig:
    """What ``automc search`` takes; ``None`` means the default (or, on resume, the run's stored value)."""

    model: str | None = None
    data: str | None = None
    target_pr: float | None = None
    budget: int | None = None  # evaluated strategy steps
    weights: str | None = None  # without weights, a base model is trained first (train_epochs)
    epochs: float | None = None  # search fidelity: base fine-tune epochs the catalogue factors multiply
    final_epochs: float | None = None  # final fine-tune of the front's top schemes; 0 skips it
    data_fraction: float | None = None  # search fidelity: stratified share of the training data
    val_data: str | None = None
    val_from: str | None = None  # "test" | "train"
    seed: int | None = None
    strategy: str | None = None
    time_limit: float | None = None  # seconds
    store: str | None = None
    out: str | None = None
    per_round: int | None = None
    max_length: int | None = None
    reuse: bool | None = None
    top_k: int | None = None
    device: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    cache_bytes: int | None = None
    train_epochs: float | None = None
    resume: str | None = None
    cache_dir: str | None = None  # models of evaluated schemes and a trained base (default: user cache dir)
    width: int | None = None  # first-stage width of a built-in model (tests use tiny ones)
    workers: int | None = None  # evaluations of a round run side by side as Ray tasks when > 1
    gpus_per_worker: float | None = None  # share of a GPU each Ray worker reserves (0.25: four per GPU)
    ray_address: str | None = None  # join this Ray cluster instead of starting a local instance
    # the strategy's options (``SearchStrategy.OPTIONS``), text or typed values; part of the run's identity
    strategy_options: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SearchEvent:
    """Progress of a run, for a live display: ``kind`` is start, step, round, final or done."""

    kind: str
    run_id: str
    round: int
    done: int
    budget: int
    best_val: float | None = None  # best validation accuracy at PR >= gamma so far
    front_size: int = 0
    eta: float | None = None  # seconds, from the mean step time
    message: str = ""


@dataclass(frozen=True)
class SearchResult:
    """A finished run: its front (rows of ``report.front_rows``), what it cost and what it reused."""

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
    trained_on: dict[str, int] = field(default_factory=dict)  # task -> steps the strategy's model learnt from

    setup_seconds: float = 0.0  # data, base model, embeddings: before the first proposal

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
                "front": [{k: row.get(k) for k in keys} for row in self.front], "evaluations": self.evaluations,
                "failed": self.failed, "reuse": dict(self.reuse), "seconds": self.seconds,
                "train_seconds": self.train_seconds, "setup_seconds": self.setup_seconds, "overhead": self.overhead,
                "store": self.store, "out": str(self.out) if self.out else None, "files": dict(self.files)}


class SearchInterrupted(AutomcError):
    """Ctrl-C stopped a run after writing what it had; ``str()`` says how to resume it."""

    def __init__(self, run_id: str, command: str) -> None:
        self.run_id, self.command = run_id, command
        super().__init__(f"search run {run_id} interrupted; resume with: {command}")


# -- configuration -------------------------------------------------------------------------------------------

def parse_duration(text: str | float | None) -> float | None:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1h30m``; raises ``ValidationError``."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or re.sub(r"\d+(?:\.\d+)?\s*[hms]", "", s).strip():
        raise ValidationError(f"expected a duration like 90s, 30m, 2h or 1h30m, got {text!r}", field="--time-limit")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _check(cfg: SearchConfig) -> None:
    """Range checks of the values given (``None`` = not given); raises ``ValidationError`` naming the flag."""
    from automc.search import STRATEGIES

    def bad(flag: str, problem: str) -> ValidationError:
        return ValidationError(problem, field=flag)

    if cfg.target_pr is not None and not 0.0 < cfg.target_pr < 1.0:
        raise bad("--target-pr", f"must be in (0, 1), got {cfg.target_pr}")
    if cfg.budget is not None:
        if isinstance(cfg.budget, bool) or not isinstance(cfg.budget, numbers.Integral):
            raise bad("--budget", f"must be a whole number of evaluated steps, got {cfg.budget!r}")
        if cfg.budget < 1:
            raise bad("--budget", f"must be at least 1 evaluated step, got {cfg.budget}")
        if cfg.budget > MAX_BUDGET:
            raise bad("--budget", f"must be at most {MAX_BUDGET:,} evaluated steps, got {cfg.budget:,}")
    if cfg.seed is not None and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, numbers.Integral)
                                 or not 0 <= cfg.seed <= MAX_SEED):
        raise bad("--seed", f"must be a whole number in 0..{MAX_SEED}, got {cfg.seed!r}")
    if cfg.strategy is not None and cfg.strategy not in STRATEGIES:
        raise bad("--strategy", f"unknown strategy {cfg.strategy!r}; known: {', '.join(sorted(STRATEGIES))}")
    for flag, value in (("--epochs", cfg.epochs), ("--final-epochs", cfg.final_epochs),
                        ("--train-epochs", cfg.train_epochs)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise bad(flag, f"must be ≥ 0, got {value}")
    if cfg.data_fraction is not None and not 0.0 < cfg.data_fraction <= 1.0:
        raise bad("--data-fraction", f"must be in (0, 1], got {cfg.data_fraction}")
    if cfg.val_from is not None and cfg.val_from not in ("test", "train"):
        raise bad("--val-from", f"must be test or train, got {cfg.val_from!r}")
    for flag, value in (("--per-round", cfg.per_round), ("--max-length", cfg.max_length),
                        ("--batch-size", cfg.batch_size)):
        if value is not None and value < 1:
            raise bad(flag, f"must be at least 1, got {value}")
    if cfg.max_length is not None and cfg.max_length > MAX_LENGTH:
        raise bad("--max-length", f"must be at most {MAX_LENGTH} strategies in a scheme, got {cfg.max_length:,}")
    if cfg.top_k is not None and cfg.top_k < 0:
        raise bad("--top-k", f"must be ≥ 0, got {cfg.top_k}")
    if cfg.time_limit is not None and cfg.time_limit <= 0:
        raise bad("--time-limit", f"must be positive, got {cfg.time_limit}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise bad("--lr", f"must be positive, got {cfg.lr}")
    if cfg.device is not None and cfg.device not in ("cpu", "cuda"):
        raise bad("--device", f"unknown device {cfg.device!r}; use cpu or cuda")
    if cfg.workers is not None and cfg.workers < 1:
        raise bad("--workers", f"must be at least 1, got {cfg.workers}")
    if cfg.gpus_per_worker is not None and not 0.0 <= cfg.gpus_per_worker <= 64:
        raise bad("--gpus-per-worker", f"must be between 0 and 64, got {cfg.gpus_per_worker}")


def _resolve(cfg: SearchConfig, stored: Mapping[str, Any] | None) -> SearchConfig:
    """Fill what was not given: from the stored run's config on resume, else from ``DEFAULTS``."""
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    base = dict(DEFAULTS)
    if stored:
        base.update({k: v for k, v in stored.items() if k in SearchConfig.__dataclass_fields__ and v is not None})
        base.pop("resume", None)
        for k in ("time_limit", "workers", "gpus_per_worker", "ray_address"):  # per session, not per run
            base.pop(k, None)
        base["workers"] = DEFAULTS["workers"]
    if stored and "strategy_options" in given:  # on top of the stored ones: repeating them is no change
        given["strategy_options"] = {**(base.get("strategy_options") or {}), **given["strategy_options"]}
    out = SearchConfig(**{**base, **given})
    out = dataclasses.replace(out, strategy_options=_strategy_options(str(out.strategy), out.strategy_options))
    for flag, value in (("--model", out.model), ("--data", out.data)):
        if not value:
            raise ValidationError("is required (unless --resume names a run)", field=flag)
    from automc.compress.data import is_builtin

    if not is_builtin(out.data) and not Path(out.data).exists():
        raise ValidationError("data path not found", path=str(out.data))
    for flag, value in (("--weights", out.weights), ("--val-data", out.val_data)):
        if value and not Path(value).exists():
            raise ValidationError(f"{flag}: file not found", path=str(value))
    _check_combinations(cfg, out)
    return out


def _check_combinations(given: SearchConfig, cfg: SearchConfig) -> None:
    """Flags that another flag would make ineffective are refused, never ignored (``given``: as passed)."""
    if cfg.val_data and cfg.val_from == "train":
        raise ValidationError(f"train would carve the validation split out of the training data, but --val-data "
                              f"{cfg.val_data} is the validation set; give one of them", field="--val-from")
    if given.train_epochs is not None and cfg.weights:
        raise ValidationError("a base model is trained only without --weights; drop one of them",
                              field="--train-epochs")
    if given.reuse and cfg.strategy != "progressive":
        raise ValidationError(f"only the progressive strategy learns from other tasks; {cfg.strategy} would "
                              f"ignore it", field="--reuse")
    if given.gpus_per_worker is not None and int(cfg.workers or 1) <= 1 and not cfg.ray_address:
        raise ValidationError("applies to Ray workers only: give --workers 2 or more (or --ray-address)",
                              field="--gpus-per-worker")


def _check_gpus(cfg: SearchConfig) -> None:
    """GPUs the workers ask for must exist on this machine (a local Ray instance never grows); checked before
    anything is written. ``RayExecutor`` checks again with what Ray sees."""
    if int(cfg.workers or 1) <= 1 or cfg.ray_address or not cfg.gpus_per_worker:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.gpus_per_worker > have:
        raise ValidationError(f"{cfg.gpus_per_worker:g} GPU per worker, but this machine has {have} GPU(s)",
                              field="--gpus-per-worker")


def _check_paths(cfg: SearchConfig, run_dir: Path) -> None:
    """The report folder and the run's model cache must be directories this process can create and write."""
    from automc._fs import check_writable_dir

    if cfg.out:
        check_writable_dir(cfg.out, "--out")
    check_writable_dir(run_dir, "--cache-dir")


def _strategy_options(strategy: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options checked and typed by the strategy's declaration, before any work."""
    from automc.search import STRATEGIES

    if given is not None and not isinstance(given, Mapping):
        raise ValidationError(f"expected a mapping of option names to values, got {given!r}",
                              field="--strategy-option")
    try:
        return STRATEGIES[strategy].parse_options(dict(given or {}))
    except ValueError as e:
        raise ValidationError(f"{e} ('--strategy-option help' lists them)", field="--strategy-option") from None


def file_identity(path: str | None) -> str | None:
    """The content of a data or weights location: sha256 of a file; of names and sizes for a directory."""
    if not path:
        return None
    from automc.compress.data import is_builtin

    if is_builtin(path):
        return f"builtin:{path}"
    p = Path(path)
    digest = hashlib.sha256()
    if p.is_file():
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        digest.update(f"{f.relative_to(p)}\0{f.stat().st_size}\n".encode())
    return "dir:" + digest.hexdigest()


def identity(cfg: SearchConfig) -> dict[str, Any]:
    """What must stay the same when a run is resumed, with files replaced by their content hashes."""
    out = {k: getattr(cfg, k) for k in IDENTITY}
    from automc.importers._common import model_name

    out["model"] = model_name(str(cfg.model))
    out["weights"] = file_identity(cfg.weights)
    out["data"] = file_identity(cfg.data)
    out["val_data"] = file_identity(cfg.val_data)
    if cfg.weights:
        out["train_epochs"] = None
    if cfg.strategy_options:  # absent without options: runs stored before options existed resume unchanged
        out["strategy_options"] = dict(sorted(cfg.strategy_options.items()))
    return out


def fingerprint(ident: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _compare(run_id: str, stored: Mapping[str, Any], ident: Mapping[str, Any]) -> None:
    for k in (*IDENTITY, "strategy_options"):
        if stored.get(k) != ident.get(k):
            what = "content" if k in ("weights", "data", "val_data") else "value"
            own = "strategy options (leave --strategy-option out)" if k == "strategy_options" else (
                "model, weights and data")
            raise ValidationError(f"search run {run_id} was started with another {k.replace('_', '-')} {what} "
                                  f"({stored.get(k)!r}, now {ident.get(k)!r}); resume it with the run's own "
                                  f"{own}", field="--resume")


def default_cache_dir(run_id: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "automc" / "runs" / run_id


def _run_dir(cfg: SearchConfig, run_id: str) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(run_id)


@contextlib.contextmanager
def _opened(uri: str) -> Iterator[Store]:
    """The store, open only for the duration of one write or read (an embedded store has one writer at a time)."""
    from automc.kb import open_store

    with open_store(uri) as s:
        yield s


def resume_command(run_id: str, store: str) -> str:
    return f"automc search --resume {run_id} --store {shlex.quote(store)}"


# -- the run -------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """What one session of a run holds: resolved config, evaluator, task, history and the clock."""

    id: str
    cfg: SearchConfig
    store: str
    task: TaskFeatures
    evaluator: Any
    space: Any
    history: History
    base: dict[str, Any]
    config_json: dict[str, Any]
    started: float
    seconds_before: float  # wall time of earlier sessions of this run
    progress: Callable[[SearchEvent], None] | None
    full_data: Any  # all the training images (the search may use a fraction of them)
    step_seconds: list[float] = field(default_factory=list)
    deadline: float | None = None

    executor: Any = None  # a Ray executor when the run has several workers; None evaluates in this process

    @contextlib.contextmanager
    def opened(self) -> Iterator[Store]:
        """The run's store, open for one write or read."""
        with _opened(self.store) as s:
            yield s

    @property
    def done(self) -> int:
        return len(self.history)

    def emit(self, kind: str, round_: int, message: str = "") -> None:
        if self.progress is None:
            return
        from automc.search.pareto import front

        fr = front(self.history.complete(), self.cfg.target_pr)
        best = max((o.val_accuracy for o in fr if o.val_accuracy is not None), default=None)
        left = self.cfg.budget - self.done
        mean = sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else None
        eta = None if mean is None else mean * left
        self.progress(SearchEvent(kind, self.id, round_, self.done, int(self.cfg.budget), best, len(fr), eta, message))

    def time_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def search(config: SearchConfig, *, progress: Callable[[SearchEvent], None] | None = None) -> SearchResult:
    """Run (or resume) a search; returns the front and what it cost. Never prints.

    Raises ``ValidationError`` / ``NotFoundError`` for bad input before anything is written, and
    ``SearchInterrupted`` after Ctrl-C (the run is INTERRUPTED and can be resumed).
    """
    from automc._interrupt import catching

    t0 = time.monotonic()
    _check(config)
    _check_gpus(config)  # workers and their GPUs are per session: what is given is what is used
    with catching():  # a Ctrl-C that a library swallows still stops the run (``_interrupt.check``)
        return _search(config, progress, t0)


def _search(config: SearchConfig, progress: Callable[[SearchEvent], None] | None, t0: float) -> SearchResult:
    from automc.kb import default_store_uri, sweep_stale
    from automc.search import storage

    store_uri = config.store or default_store_uri()
    sweep_stale(store_uri)  # the search's one stale sweep: opening the store writes nothing
    stored, done = None, 0
    if config.resume:
        from automc.kb import open_store

        with open_store(store_uri, create=False) as s:
            stored = storage.load_run(s, config.resume)
            done = len(storage.search_rows(storage.run_evaluations(s, stored.id)))
    cfg = _resolve(config, stored.config.get("config") if stored else None)
    if stored is not None and int(cfg.budget) < done:
        raise ValidationError(f"search run {stored.id} has already evaluated {done} steps; a budget below that "
                              f"cannot be kept (give at least {done}, or leave --budget out to keep "
                              f"{stored.budget})", field="--budget")
    ident = identity(cfg)
    if stored is not None:
        _compare(stored.id, stored.config.get("identity", {}), ident)
    run_id = stored.id if stored else uuid.uuid4().hex[:12]
    _check_paths(cfg, _run_dir(cfg, run_id))
    if stored is not None:
        with _opened(store_uri) as s:  # atomic: of two resumes of one run, the second is refused here
            storage.claim_run(s, stored.id)
    try:
        run = _start(run_id, cfg, ident, store_uri, stored, progress, t0)
    except BaseException:
        if stored is not None:  # give the run back as it was: nothing of this session ran
            with contextlib.suppress(Exception), _opened(store_uri) as s:
                back = stored.state if stored.state in ("COMPLETE", "FAILED") else "INTERRUPTED"
                storage.update_run(s, stored.id, state=back, error=stored.error)
        raise
    return _loop(run, stored)


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

    from automc.compress.models import load_weights, model_for_data

    net = model_for_data(str(cfg.model), data, cfg.weights, width=cfg.width)
    if cfg.weights:
        return net
    path = run_dir / "base.pt"
    if path.is_file():
        return load_weights(net, path)
    from automc.compress.builtin import train_base

    train_base(net, data, float(cfg.train_epochs), batch_size=int(cfg.batch_size), seed=int(cfg.seed), device=device)
    from automc._disk import writing

    tmp = path.with_suffix(".tmp")
    with writing(path):  # a full disk is one line naming it, not torch's "enforce fail" traceback
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), tmp)
        tmp.replace(path)  # a killed training leaves no half-written base behind
    return net


def _start(run_id: str, cfg: SearchConfig, ident: dict[str, Any], store_uri: str, stored: Any,
           progress: Callable[[SearchEvent], None] | None, t0: float) -> _Run:
    """Load data and model, measure the base, write (or reopen) the SearchRun, build strategy and history."""
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.identity import task_features
    from automc.search import storage
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace

    torch.manual_seed(int(cfg.seed))
    device = _device(cfg.device)
    run_dir = _run_dir(cfg, run_id)
    # the full training part trains a base model, sets the task's features and serves the final fine-tune
    full = _load_data(cfg, 1.0, device)
    data = full if cfg.data_fraction >= 1 else _load_data(cfg, float(cfg.data_fraction), device)
    net = _base_model(cfg, full, device, run_dir)
    budget = TrainBudget(epochs=float(cfg.epochs), batch_size=int(cfg.batch_size), lr=float(cfg.lr))
    task = Task(data, float(cfg.target_pr), budget, device, int(cfg.seed))
    space = SearchSpace(max_length=int(cfg.max_length))
    evaluator = Evaluator(net, task, cache_dir=run_dir / "cache", cache_bytes=int(cfg.cache_bytes),
                          seed=int(cfg.seed), space=space, data_fraction=float(cfg.data_fraction))
    base = evaluator.base().record()
    # the same Task as ``automc compress --store`` of this model, weights and data (compress.identity)
    features = task_features(str(cfg.model), str(cfg.data), full, val_accuracy=float(base["val_accuracy"]),
                             params=float(base["params"]), flops=float(base["flops"]))
    config_json = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("resume", "store")},
                   "identity": ident, "base": base, "run_dir": str(run_dir),
                   "setup_seconds": float(stored.config.get("setup_seconds") or 0.0) if stored else 0.0}
    with _opened(store_uri) as s:
        if stored is None:
            storage.create_run(s, run_id=run_id, algorithm=str(cfg.strategy), task=features, seed=int(cfg.seed),
                               target_pr=float(cfg.target_pr), budget=int(cfg.budget), config=config_json,
                               fingerprint=fingerprint(ident))
        else:
            storage.fail_running(s, run_id, f"stale: the process running it ({stored.pid} on {stored.host}) died")
            storage.update_run(s, run_id, state="RUNNING", budget=int(cfg.budget), config=config_json, error="",
                               finished=None)
        rows = storage.run_evaluations(s, run_id) if stored is not None else []
    base_obs = Observation((), "COMPLETE", val_accuracy=base.get("val_accuracy"), pr=0.0, fr=0.0,
                           params=base.get("params"), flops=base.get("flops"), round=-1)
    history = History(base_obs, [storage.observation(r) for r in storage.search_rows(rows)])
    deadline = None if cfg.time_limit is None else t0 + float(cfg.time_limit)
    return _Run(run_id, cfg, store_uri, features, evaluator, space, history, base, config_json, t0,
                stored.seconds if stored else 0.0, progress, full, deadline=deadline)


def _context(run: _Run) -> tuple[Context, dict[str, int]]:
    """The strategy's context; with reuse, the prior steps of other tasks, transfer schemes and embeddings."""
    from automc.search.reuse import ensure_embeddings, load_prior, task_vector

    cfg = run.cfg
    info: dict[str, Any] = {"evaluations": 0, "tasks": 0}
    embeddings: Mapping[str, Any] = {}
    prior: tuple = ()
    transfer: tuple = ()
    if cfg.reuse:
        with run.opened() as s:
            embeddings, embed_info = ensure_embeddings(s, refresh=True)
            p = load_prior(s, run.task.id, task=run.task)
        prior, transfer = tuple(p.records), tuple(p.transfer)
        info = {"evaluations": int(p.evaluations), "tasks": int(p.tasks), "transfer": len(p.transfer),
                "embeddings": embed_info}
    else:
        with run.opened() as s:  # the stored embeddings as they are: no refresh, nothing learnt from other tasks
            embeddings, _ = ensure_embeddings(s, refresh=False)
    ctx = Context(space=run.space, target_pr=float(cfg.target_pr), seed=int(cfg.seed), task=run.task,
                  task_vector=task_vector(run.task, float(cfg.target_pr)), embeddings=embeddings, prior=prior,
                  transfer=transfer, per_round=int(cfg.per_round), options=dict(cfg.strategy_options or {}))
    return ctx, info


def _start_step(run: _Run, scheme: SchemeKey, round_: int) -> tuple[str, str, float]:
    """Write a step's RUNNING record (its parent is in the history); returns (evaluation id, created, clock)."""
    from automc.catalog import Scheme
    from automc.search import storage
    from automc.search.evaluator import step_seed

    cfg = run.cfg
    full = run.space.to_scheme(scheme)
    extra = {"fidelity": "search", "round": round_, "parent": Scheme(full.strategies[:-1]).id,
             "epochs": float(cfg.epochs), "data_fraction": float(cfg.data_fraction),
             "seed": step_seed(int(cfg.seed), scheme), "val_source": run.evaluator.task.data.sources.get("val")}
    t = time.monotonic()
    with run.opened() as s:
        eval_id = s.start_evaluation(run.task, full, target_pr=float(cfg.target_pr), search_run=run.id,
                                     device=str(run.evaluator.task.device), extra=extra)
        # the run's heartbeat (another host tells a live run from a dead one by it) and its wall time so far, so a
        # killed session's seconds still count after a resume
        storage.update_run(s, run.id, seconds=run.seconds_before + time.monotonic() - run.started)
    return eval_id, _stamp(), t


def _stamp() -> str:
    # to the microsecond: a resumed run reads its steps back in the order they were evaluated
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _end_step(run: _Run, token: tuple[str, str, float], result: Any, round_: int,
              created: str | None = None) -> Observation:
    """Write a step's result (one transaction) as soon as it is finished, stamped ``created`` (default: when it
    started), so that a killed run loses only the steps in flight; returns what the strategy sees of it."""
    from automc.search import storage

    eval_id, started, t = token
    with run.opened() as s:
        storage.end_evaluation(s, eval_id, {**result.record(), "created": created or started})
    run.step_seconds.append(time.monotonic() - t)
    return result.observation(round_, eval_id)


def _interrupted(run: _Run, tokens: list[tuple[str, str, float]], e: BaseException) -> None:
    """Mark the steps in flight FAIL: cut short (evaluated again on resume, ``storage.CUT_SHORT``) for Ctrl-C or a
    disk error of the tool's own files, else with the error."""
    from automc.errors import DiskError, StoreError

    if isinstance(e, DiskError) and isinstance(e, StoreError):
        return  # the store cannot record anything now; resume marks these steps stale
    reason = ("interrupted" if isinstance(e, KeyboardInterrupt) else f"interrupted: {e}" if isinstance(e, DiskError)
              else f"{type(e).__name__}: {e}")
    # on a disk error the store may sit on the full disk too
    guard = contextlib.suppress(AutomcError) if isinstance(e, DiskError) else contextlib.nullcontext()
    with guard, run.opened() as s:
        for eval_id, _, _ in tokens:
            s.fail_evaluation(eval_id, reason)


def _step(run: _Run, scheme: SchemeKey, round_: int) -> Observation:
    """Evaluate one scheme (its parent is in the history): RUNNING record, evaluation, COMPLETE or FAIL."""
    token = _start_step(run, scheme, round_)
    try:
        result = run.evaluator.evaluate(scheme)
        check_interrupt()  # a Ctrl-C swallowed inside the step's libraries: the step is cut short, not recorded
    except BaseException as e:
        _interrupted(run, [token], e)
        raise
    return _end_step(run, token, result, round_)


def _parallel_round(run: _Run, proposals: list[SchemeKey], round_: int) -> list[Observation]:
    """The serial round's steps side by side through the run's Ray executor, each written as it arrives; the
    history gets them in the serial order, and so does a resumed run, even one killed mid-round.

    A resumed run reads its steps back ordered by round, then ``created``: each step is written stamped with the
    round's start plus its place in the serial walk of the proposals (in microseconds), never with when it ran,
    so the round's steps in the store, whichever of them finished, are always in the serial order.
    """
    from automc.search.parallel import evaluate_round, serial_positions

    start = _dt.datetime.now(_dt.UTC)
    place = serial_positions(proposals)
    written: set[str] = set()

    def finished(result: Any, token: tuple[str, str, float]) -> Observation:
        at = place.get(tuple(result.scheme), len(place))  # every step is some proposal's prefix
        created = (start + _dt.timedelta(microseconds=at)).isoformat(timespec="microseconds")
        obs = _end_step(run, token, result, round_, created)
        written.add(token[0])
        run.emit("step", round_, f"{'ok' if obs.ok else 'FAIL'} {scheme_text(obs.scheme)}")
        return obs

    def interrupted(tokens: list[tuple[str, str, float]], e: BaseException) -> None:
        # a step written before the interruption (e.g. Ctrl-C in its progress event) keeps its result
        _interrupted(run, [tok for tok in tokens if tok[0] not in written], e)

    return evaluate_round(run.evaluator, run.executor, proposals, run.history, int(run.cfg.budget) - run.done,
                          started=lambda scheme: _start_step(run, scheme, round_), finished=finished,
                          interrupted=interrupted, time_up=run.time_up)


def _round(run: _Run, strategy: Any, round_: int) -> list[Observation]:
    """One round: proposals, each missing prefix then the scheme, until the budget or the time is spent."""
    cfg = run.cfg
    rng = round_rng(int(cfg.seed), round_)
    proposals = strategy.propose(run.history, min(int(cfg.per_round), int(cfg.budget) - run.done), rng)
    if run.executor is not None:
        return _parallel_round(run, proposals, round_)
    new: list[Observation] = []
    for scheme in proposals:
        for k in range(1, len(scheme) + 1):
            prefix = tuple(scheme[:k])
            seen = run.history.get(prefix)
            if seen is not None:
                if not seen.ok:
                    break  # a failed scheme has no model to extend
                continue
            if run.done >= cfg.budget or run.time_up():
                return new
            obs = _step(run, prefix, round_)
            run.history.add(obs)
            new.append(obs)
            run.emit("step", round_, f"{'ok' if obs.ok else 'FAIL'} {scheme_text(prefix)}")
            if not obs.ok:
                break
    return new


def _loop(run: _Run, stored: Any) -> SearchResult:
    from automc.search import STRATEGIES, storage

    cfg = run.cfg
    try:
        ctx, reuse_info = _context(run)
        run.config_json["reuse"] = reuse_info
        # setup (data, training the base model, measuring it, an embedding refresh) is not search overhead
        run.config_json["setup_seconds"] = float(run.config_json.get("setup_seconds") or 0.0) + (
            time.monotonic() - run.started)
        with run.opened() as s:
            storage.update_run(s, run.id, config=run.config_json)
        strategy = STRATEGIES[str(cfg.strategy)](ctx)
        if int(cfg.workers or 1) > 1 or cfg.ray_address:
            from automc.search.parallel import make_executor

            gpus = cfg.gpus_per_worker
            if gpus is None:  # on a GPU, the workers share it evenly by default
                gpus = 1.0 / int(cfg.workers) if run.evaluator.task.device.type == "cuda" else 0.0
            run.executor = make_executor(run.evaluator, workers=int(cfg.workers), gpus_per_worker=float(gpus),
                                         address=cfg.ray_address)
        if stored is not None and stored.strategy_state:
            strategy.load_state_dict(stored.strategy_state)
        round_ = (stored.round + 1) if stored is not None else 0
        round_ = max(round_, run.history.rounds - 1 if run.history.rounds else 0)
        run.emit("start", round_, f"task {run.task.id}; {run.done}/{cfg.budget} steps already evaluated")
        message = ""
        while run.done < cfg.budget:
            if run.time_up():
                message = "time limit reached"
                break
            new = _round(run, strategy, round_)
            if not new and not run.time_up():
                message = "the strategy proposed nothing new: the search space is exhausted"
                break
            strategy.observe(run.history, new)
            with run.opened() as s:
                storage.update_run(s, run.id, round=round_, strategy_state=strategy.state_dict(),
                                   seconds=run.seconds_before + time.monotonic() - run.started)
            run.emit("round", round_)
            round_ += 1
        _final(run, round_)
        # F_mo's training data by task (progressive); strategies without a learnt model have none
        trained_on = dict(getattr(strategy, "trained_on", None) or {})
        return _finish(run, reuse_info, message, trained_on)
    except KeyboardInterrupt:
        with run.opened() as s:
            storage.fail_running(s, run.id, "interrupted")
            storage.update_run(s, run.id, state="INTERRUPTED",
                               seconds=run.seconds_before + time.monotonic() - run.started)
        raise SearchInterrupted(run.id, resume_command(run.id, run.store)) from None
    except BaseException as e:
        disk = _disk_failure(run, e)
        if disk is not None:
            raise _stopped_by_disk(run, disk) from e
        with contextlib.suppress(Exception), run.opened() as s:
            storage.fail_running(s, run.id, f"{type(e).__name__}: {e}")
            storage.update_run(s, run.id, state="FAILED", error=f"{type(e).__name__}: {e}"[:2000],
                               seconds=run.seconds_before + time.monotonic() - run.started)
        raise
    finally:
        if run.executor is not None:
            run.executor.close()


def _disk_failure(run: _Run, e: BaseException) -> Any:
    """The ``DiskError`` that stopped the run: raised by a write of the tool's own files (store, model cache), or a
    disk failure of its outputs (report, models under ``--out``) that reached the loop as it was; else None."""
    from automc._disk import disk_error
    from automc.errors import DiskError

    if isinstance(e, DiskError):
        return e
    if isinstance(e, OSError | RuntimeError):
        return disk_error(e, getattr(e, "filename", None) or run.cfg.out)
    return None


def _stopped_by_disk(run: _Run, e: Any) -> AutomcError:
    """Stop the run for a disk error of its own files, as for Ctrl-C: steps in flight are cut short and the run is
    INTERRUPTED (when the store can still be written; a full store keeps its records, which resume marks stale).
    Returns the error to raise: one line naming the file, the free space there and the resume command."""
    import errno

    from automc.errors import StoreError
    from automc.search import storage

    if not isinstance(e, StoreError):
        with contextlib.suppress(AutomcError), run.opened() as s:  # the store may sit on the full disk too
            storage.fail_running(s, run.id, f"interrupted: {e}")
            storage.update_run(s, run.id, state="INTERRUPTED", error=str(e)[:2000],
                               seconds=run.seconds_before + time.monotonic() - run.started)
    fix = "free space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix it"
    return type(e)(e.path, free=e.free, problem=e.problem, errno=e.errno, mount=e.mount,
                   then=f"{fix} and resume with: {resume_command(run.id, run.store)}")


def _final(run: _Run, round_: int) -> None:
    """Fine-tune the top-k front schemes again from the base model at full fidelity (skipped by final_epochs 0)."""
    from automc.catalog import Scheme
    from automc.search import storage
    from automc.search.evaluator import step_seed
    from automc.search.pareto import front

    cfg = run.cfg
    if not cfg.final_epochs or not cfg.top_k:
        return
    with run.opened() as s:
        done = {r["scheme"] for r in storage.run_evaluations(s, run.id)
                if r["fidelity"] == "final" and r["state"] == "COMPLETE"}
    best = sorted(front(run.history.complete(), cfg.target_pr), key=lambda o: (-(o.val_accuracy or 0), o.scheme))
    todo = [o for o in best[: int(cfg.top_k)] if scheme_text(o.scheme) not in done]
    if not todo:
        return
    task = _final_task(run)
    for o in todo:
        scheme = run.space.to_scheme(o.scheme)
        extra = {"fidelity": "final", "round": round_, "parent": Scheme(scheme.strategies[:-1]).id,
                 "epochs": float(cfg.final_epochs), "data_fraction": 1.0, "seed": step_seed(int(cfg.seed), o.scheme),
                 "val_source": task.data.sources.get("val")}
        run.emit("final", round_, f"final fine-tune of {scheme.text}")
        with run.opened() as s:
            eval_id = s.start_evaluation(run.task, scheme, target_pr=float(cfg.target_pr), search_run=run.id,
                                         device=str(task.device), extra=extra)
        try:
            result, model = run.evaluator.final(o.scheme, task)
            check_interrupt()
        except BaseException as e:
            with run.opened() as s:
                s.fail_evaluation(eval_id, "interrupted" if isinstance(e, KeyboardInterrupt) else str(e))
            raise
        if result.state == "COMPLETE" and cfg.out:  # saved before it is recorded: a recorded final model exists
            _save_model(model, Path(cfg.out) / "final" / scheme.id, task, scheme.text, cfg.target_pr, eval_id)
        with run.opened() as s:
            storage.end_evaluation(s, eval_id, result.record())


def _final_task(run: _Run) -> Any:
    """The final fine-tune's task: all the training data and ``final_epochs``, the run's seed and device."""
    from automc.compress.base import Task

    cfg = run.cfg
    return Task(run.full_data, float(cfg.target_pr), dataclasses.replace(run.evaluator.task.budget,
                                                                       epochs=float(cfg.final_epochs)),
                run.evaluator.task.device, int(cfg.seed))


def _save_model(model: Any, directory: Path, task: Any, text: str, target_pr: float, evaluation_id: str) -> None:
    """Save a model into a temporary folder beside ``directory``, check that it loads, then rename it into place:
    a kill leaves the previous folder or none, never a half-written one."""
    from automc.compress.saving import save_compressed

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    data = task.data
    save_compressed(model, tmp, data.example_input(2), mean=data.mean, std=data.std,
                    extra={"scheme": text, "target_pr": target_pr, "evaluation_id": evaluation_id})
    _install(tmp, directory)


def _install(tmp: Path, directory: Path) -> None:
    """Rename a checked saved-model folder into place (the old one, if any, goes only after the new one is in)."""
    import shutil

    _loads(tmp)
    for left in directory.parent.glob(f".{directory.name}.*-*"):  # an earlier export killed midway
        if left != tmp:
            shutil.rmtree(left, ignore_errors=True)
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _loads(directory: Path) -> None:
    """Raise unless the saved model in ``directory`` loads both ways (standalone program and automc's state)."""
    from automc.compress.saving import load_compressed, load_standalone

    arch = json.loads((directory / "architecture.json").read_text())
    load_standalone(directory / arch["standalone"])
    if arch.get("onnx"):
        import onnx

        onnx.checker.check_model(str(directory / arch["onnx"]))
    if arch.get("base") is not None:
        load_compressed(directory)


def _saved_evaluation(directory: Path) -> str | None:
    """The evaluation id a saved model names (``_install`` checks that its copy loads), when there is one."""
    try:
        return str(json.loads((directory / "architecture.json").read_text())["extra"]["evaluation_id"])
    except (OSError, ValueError, KeyError, TypeError):  # absent or foreign: the model is rebuilt instead
        return None


def _finish(run: _Run, reuse_info: Mapping[str, Any], message: str, trained_on: dict[str, int]) -> SearchResult:
    """Export the reported best model, then mark the run COMPLETE with its front, write the report, drop the cache.

    COMPLETE comes after the export, so a kill during the export leaves the run to ``--resume``, which exports again.
    """
    from automc.search import report, storage

    out = Path(run.cfg.out) if run.cfg.out else None
    files: dict[str, str] = {}
    with run.opened() as s:
        info = report.build_report(s, run.id)
    best = report.best_row(info) if out is not None else None
    if best is not None:
        why = _export(run, best, out / "model")
        if why:
            message = f"{message}; {why}" if message else why
        else:
            files["model"] = str(out / "model")
    seconds = run.seconds_before + time.monotonic() - run.started
    with run.opened() as s:
        storage.update_run(s, run.id, state="COMPLETE", front=info.front, seconds=seconds)
        info = report.build_report(s, run.id)
    if out is not None:
        files = {**{k: str(v) for k, v in report.write_report(info, out).items()}, **files}
    import shutil

    shutil.rmtree(_run_dir(run.cfg, run.id) / "cache", ignore_errors=True)
    run.emit("done", max(run.history.rounds - 1, 0), message)
    return SearchResult(run.id, "COMPLETE", run.task.id, info.front, info.evaluations, info.failed,
                        dict(reuse_info), seconds, info.train_seconds, run.store, out, files, message, trained_on,
                        info.setup_seconds)


def _export(run: _Run, best: Mapping[str, Any], target: Path) -> str:
    """Export the model the report names as best into ``target``; returns why nothing was exported, or "".

    The model is the saved final model of that evaluation, else it is rebuilt with the recipe and seeds of its
    evaluation (final fine-tune or search step) and must measure the validation accuracy recorded for it.
    """
    from automc.compress.train import evaluate

    key, eval_id = scheme_key(best["scheme"]), str(best["evaluation_id"])
    final_dir = Path(str(run.cfg.out)) / "final" / str(best["scheme_id"])
    if best["fidelity"] == "final" and _saved_evaluation(final_dir) == eval_id:
        import shutil

        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(final_dir, tmp)
        try:
            _install(tmp, target)
            return ""
        except Exception:  # noqa: BLE001 - a damaged saved model: rebuild it below
            shutil.rmtree(tmp, ignore_errors=True)
    if best["fidelity"] == "final":
        task = _final_task(run)
        result, model = run.evaluator.final(key, task)
        measured = result.val_accuracy if result.ok else None
    else:
        task = run.evaluator.task
        model = run.evaluator.model(key)
        measured = evaluate(model, task.data, "val", device=task.device).top1
    check_interrupt()
    if measured is None or measured != best["val_accuracy"]:
        got = "it failed" if measured is None else f"validation accuracy {measured:.4f}"
        return (f"the reported best model ({best['fidelity']} evaluation {eval_id}, validation accuracy "
                f"{best['val_accuracy']:.4f}) could not be rebuilt exactly ({got}; a non-deterministic device?); "
                f"no model exported")
    _save_model(model, target, task, str(best["scheme"]), float(run.cfg.target_pr), eval_id)
    return ""
