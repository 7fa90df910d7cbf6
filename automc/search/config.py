"""What ``automc search`` takes: the configuration, its defaults and checks, and a run's identity.

Every check runs before any work, so bad input is one ``ValidationError`` naming the flag and nothing is written.
A run's identity (model, weights and data by content, every setting that changes what is evaluated) is stored with
it; a resume with any of it changed is refused rather than mixing two experiments in one history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automc.errors import AutomcError, ValidationError

DEFAULTS: dict[str, Any] = {
    "screen": 1, "target_pr": 0.4, "budget": 14.0, "budget_unit": "compute", "epochs": 1.0, "final_epochs": 10.0,
    "final_mode": "polish", "data_fraction": 1.0, "val_from": "test",
    "seed": 0, "strategy": "progressive", "per_round": 10, "max_length": 5, "reuse": True, "top_k": 3,
    "batch_size": 128, "lr": 0.01, "cache_bytes": 2 * 1024**3, "train_epochs": 10.0, "workers": 1,
    "baseline": "kb",
}
# What defines a run: resuming with any of these changed would mix two experiments in one history.
IDENTITY = ("model", "weights", "train_epochs", "width", "data", "val_data", "val_from", "target_pr", "target_fr",
            "data_fraction", "epochs", "seed", "strategy", "max_length", "reuse", "batch_size", "lr",
            "final_mode")
# The meaning of a scheme: 2 since ``target_ratio_factor`` is a share of γ (``compress.base.step_ratio``); a run
# stored under another meaning evaluated other models under the same scheme texts and is not resumed.
SPACE_VERSION = 2
MAX_SCREEN = 20  # proposals screened per promoted one: more spends the budget on rung 0 alone
# A step takes seconds to minutes: more steps than this is a typo (and a larger number overflows the store's int64);
# the same bound holds a compute budget (in epoch-equivalents: months of training on one machine).
MAX_BUDGET = 100_000
# What ``budget`` counts: search compute in epoch-equivalents of the training split (``compress.compute``), or, for
# runs stored before compute was counted (their config has no ``budget_unit``), evaluated steps.
BUDGET_UNITS = ("compute", "steps")
MAX_SEED = 2**32 - 1  # what numpy and torch seed generators take
MAX_LENGTH = 50  # strategies in one scheme; the strategies draw lengths with int64 generators


@dataclass(frozen=True)
class SearchConfig:
    """What ``automc search`` takes; ``None`` means the default (or, on resume, the run's stored value)."""

    model: str | None = None
    data: str | None = None
    target_pr: float | None = None
    target_fr: float | None = None  # FLOPs-reduction target: a second constraint (None: none)
    budget: float | None = None  # search compute in epoch-equivalents (evaluated steps when budget_unit is "steps")
    weights: str | None = None  # without weights, a base model is trained first (train_epochs)
    epochs: float | None = None  # search fidelity: base fine-tune epochs the catalogue factors multiply
    final_epochs: float | None = None  # TOTAL final fine-tune of each of the front's top schemes; 0 skips it
    final_mode: str | None = None  # "reapply" the scheme from the base model, or "polish" the searched model
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
    # the reference single-method scheme given the same final fine-tune: "kb" (the knowledge base's choice), "none"
    # (skipped) or a scheme text as ``automc compress --scheme`` takes it; not part of the run's identity
    baseline: str | None = None
    max_steps: int | None = None  # an optional cap on evaluated steps, beside the compute budget
    # rung 0: propose ``screen`` x the round's schemes, screen each without fine-tuning, promote the best (1: off)
    screen: int | None = None
    budget_unit: str | None = None  # "compute" (new runs) or "steps" (runs stored before compute was counted)


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


def check(cfg: SearchConfig) -> None:
    """Range checks of the values given (``None`` = not given); raises ``ValidationError`` naming the flag."""
    from automc.search import STRATEGIES

    def bad(flag: str, problem: str) -> ValidationError:
        return ValidationError(problem, field=flag)

    if cfg.target_pr is not None and not 0.0 < cfg.target_pr < 1.0:
        raise bad("--target-pr", f"must be in (0, 1), got {cfg.target_pr}")
    if cfg.target_fr is not None and not 0.0 < cfg.target_fr < 1.0:
        raise bad("--target-fr", f"must be in (0, 1), got {cfg.target_fr}")
    if cfg.budget is not None:
        if isinstance(cfg.budget, bool) or not isinstance(cfg.budget, numbers.Real) or not math.isfinite(cfg.budget):
            raise bad("--budget", f"must be a number of epoch-equivalents of training, got {cfg.budget!r}")
        if not 0 < cfg.budget <= MAX_BUDGET:
            raise bad("--budget", f"must be more than 0 and at most {MAX_BUDGET:,} epoch-equivalents of training, "
                                  f"got {cfg.budget:,}")
    if cfg.max_steps is not None:
        if isinstance(cfg.max_steps, bool) or not isinstance(cfg.max_steps, numbers.Integral):
            raise bad("--max-steps", f"must be a whole number of evaluated steps, got {cfg.max_steps!r}")
        if not 1 <= cfg.max_steps <= MAX_BUDGET:
            raise bad("--max-steps", f"must be 1 to {MAX_BUDGET:,} evaluated steps, got {cfg.max_steps:,}")
    if cfg.screen is not None and (isinstance(cfg.screen, bool) or not isinstance(cfg.screen, numbers.Integral)
                                   or not 1 <= cfg.screen <= MAX_SCREEN):
        raise bad("--screen", f"must be a whole number from 1 (no screening) to {MAX_SCREEN}, got {cfg.screen!r}")
    if cfg.budget_unit is not None and cfg.budget_unit not in BUDGET_UNITS:
        raise bad("budget_unit", f"must be one of {', '.join(BUDGET_UNITS)}, got {cfg.budget_unit!r}")
    if cfg.seed is not None and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, numbers.Integral)
                                 or not 0 <= cfg.seed <= MAX_SEED):
        raise bad("--seed", f"must be a whole number in 0..{MAX_SEED}, got {cfg.seed!r}")
    if cfg.strategy is not None and cfg.strategy not in STRATEGIES:
        raise bad("--strategy", f"unknown strategy {cfg.strategy!r}; known: {', '.join(sorted(STRATEGIES))}")
    for flag, value in (("--epochs", cfg.epochs), ("--final-epochs", cfg.final_epochs),
                        ("--train-epochs", cfg.train_epochs)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise bad(flag, f"must be ≥ 0, got {value}")
    if cfg.final_mode is not None:
        from automc.compress.budget import FINAL_MODES

        if cfg.final_mode not in FINAL_MODES:
            raise bad("--final-mode", f"must be one of {', '.join(FINAL_MODES)}, got {cfg.final_mode!r}")
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
    if cfg.baseline is not None:
        baseline_scheme(cfg.baseline)


BASELINE_KEYWORDS = ("kb", "none")


def baseline_scheme(text: str) -> tuple[str, ...] | None:
    """The strategy ids ``--baseline`` names (None for ``kb`` / ``none``); raises ``ValidationError`` naming the
    flag for a text that is no scheme, or whose strategies are not in the catalogue grid (the evaluator's steps)."""
    from automc.catalog import load_catalog

    if str(text).strip().lower() in BASELINE_KEYWORDS:
        return None
    catalog = load_catalog()
    try:
        scheme = catalog.parse_scheme(str(text))
    except AutomcError as e:
        problem = getattr(e, "problem", str(e))
        inner = getattr(e, "field", None)
        raise ValidationError(f"{inner + ': ' if inner else ''}{problem} (a scheme as 'automc compress --scheme' "
                              f"takes it, e.g. \"SFP(target_ratio_factor=1.0)\", or kb, or none)",
                              field="--baseline") from None
    for s in scheme.strategies:
        if not catalog.in_grid(s):
            grid = catalog.method(s.method).grid
            off = "; ".join(f"{k}={v} is not one of {', '.join(map(str, grid[k]))}" for k, v in s.settings
                            if v not in grid[k])
            raise ValidationError(f"{s.method} off the catalogue grid the search evaluates ({off})",
                                  field="--baseline")
    return scheme.key


def resolve(cfg: SearchConfig, stored: Mapping[str, Any] | None) -> SearchConfig:
    """Fill what was not given: from the stored run's config on resume, else from ``DEFAULTS``."""
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    base = dict(DEFAULTS)
    if stored:
        base.update({k: v for k, v in stored.items() if k in SearchConfig.__dataclass_fields__ and v is not None})
        # a run stored before compute was counted keeps its budget's meaning: evaluated steps
        base["budget_unit"] = stored.get("budget_unit") or "steps"
        if given.get("budget_unit", base["budget_unit"]) != base["budget_unit"]:
            raise ValidationError(f"the run counts its budget in {base['budget_unit']}, not "
                                  f"{given['budget_unit']}", field="budget_unit")
        base.pop("resume", None)
        for k in ("time_limit", "workers", "gpus_per_worker", "ray_address"):  # per session, not per run
            base.pop(k, None)
        base["workers"] = DEFAULTS["workers"]
        if stored.get("final_mode") is None:  # stored before --final-mode existed: those runs re-applied
            base["final_mode"] = "reapply"
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
    if out.budget_unit == "steps" and (isinstance(out.budget, bool) or float(out.budget) != int(out.budget)):
        raise ValidationError(f"this run counts its budget in evaluated steps (it was stored before compute was "
                              f"counted): give a whole number, got {out.budget!r}", field="--budget")
    _check_combinations(cfg, out)
    return out


def step_cap(cfg: SearchConfig) -> int | None:
    """The most evaluated steps ``cfg`` allows: its budget when counted in steps, else ``max_steps`` (None: no cap)."""
    if cfg.budget_unit == "steps":
        return int(cfg.budget)
    return None if cfg.max_steps is None else int(cfg.max_steps)


def _reuses(strategy: str) -> bool:
    """Whether ``strategy`` learns from other tasks (``SearchStrategy.reuses``)."""
    from automc.search import STRATEGIES

    return strategy in STRATEGIES and bool(STRATEGIES[strategy].reuses)


def _check_combinations(given: SearchConfig, cfg: SearchConfig) -> None:
    """Flags that another flag would make ineffective are refused, never ignored (``given``: as passed)."""
    if cfg.val_data and cfg.val_from == "train":
        raise ValidationError(f"train would carve the validation split out of the training data, but --val-data "
                              f"{cfg.val_data} is the validation set; give one of them", field="--val-from")
    if given.train_epochs is not None and cfg.weights:
        raise ValidationError("a base model is trained only without --weights; drop one of them",
                              field="--train-epochs")
    if given.reuse and not _reuses(str(cfg.strategy)):
        raise ValidationError(f"only the progressive, amc and seernet strategies learn from other tasks; "
                              f"{cfg.strategy} would ignore it", field="--reuse")
    if given.baseline is not None and str(given.baseline).strip().lower() != "none" and not (
            cfg.final_epochs and cfg.top_k):
        raise ValidationError("the baseline gets the final fine-tune, which --final-epochs 0 or --top-k 0 skips; "
                              "give --baseline none or a final fine-tune", field="--baseline")
    if given.gpus_per_worker is not None and int(cfg.workers or 1) <= 1 and not cfg.ray_address:
        raise ValidationError("applies to Ray workers only: give --workers 2 or more (or --ray-address)",
                              field="--gpus-per-worker")


def check_gpus(cfg: SearchConfig) -> None:
    """GPUs the workers ask for must exist on this machine (a local Ray instance never grows); checked before
    anything is written. ``RayExecutor`` checks again with what Ray sees."""
    if int(cfg.workers or 1) <= 1 or cfg.ray_address or not cfg.gpus_per_worker:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.gpus_per_worker > have:
        raise ValidationError(f"{cfg.gpus_per_worker:g} GPU per worker, but this machine has {have} GPU(s)",
                              field="--gpus-per-worker")


def check_paths(cfg: SearchConfig, run_dir: Path) -> None:
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
    out["space"] = SPACE_VERSION
    if cfg.screen and int(cfg.screen) > 1:  # absent without screening: runs stored before it resume unchanged
        out["screen"] = int(cfg.screen)
    return out


def fingerprint(ident: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compare_identity(run_id: str, stored: Mapping[str, Any], ident: Mapping[str, Any]) -> None:
    if stored.get("space") != ident.get("space"):
        raise ValidationError(f"search run {run_id} was stored when target_ratio_factor was a share of what was left "
                              f"to the target (it is now a share of the target itself), so its schemes meant other "
                              f"models; start a new search", field="--resume")
    # runs stored before --final-mode existed re-applied their schemes: that is their mode
    stored = {"final_mode": "reapply", **stored} if stored.get("final_mode") is None else stored
    for k in (*IDENTITY, "strategy_options", "screen"):
        if stored.get(k) != ident.get(k):
            what = "content" if k in ("weights", "data", "val_data") else "value"
            own = {"strategy_options": "strategy options (leave --strategy-option out)",
                   "final_mode": "final mode (leave --final-mode out)"}.get(k, "model, weights and data")
            raise ValidationError(f"search run {run_id} was started with another {k.replace('_', '-')} {what} "
                                  f"({stored.get(k)!r}, now {ident.get(k)!r}); resume it with the run's own "
                                  f"{own}", field="--resume")


def default_cache_dir(run_id: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "automc" / "runs" / run_id


def run_dir(cfg: SearchConfig, run_id: str) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(run_id)


def resume_command(run_id: str, store: str) -> str:
    return f"automc search --resume {run_id} --store {shlex.quote(store)}"
