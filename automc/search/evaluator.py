"""Evaluating schemes with parent caching: a scheme's model is its parent's model with one more strategy applied.

``Evaluator.evaluate(seq + (s,))`` loads the model of ``seq`` from an on-disk LRU cache (``ModelCache``: state
dict + architecture, the ``automc.compress.saving`` format) and applies only ``s`` (``run_step``). An evicted
or missing parent is rebuilt by replaying its steps from the nearest cached ancestor with the same per-step
seeds, so a scheme's model depends only on (run seed, scheme), never on evaluation order: the evaluations of
one round are independent and may run in parallel.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from automc._interrupt import check as check_interrupt
from automc.catalog import Strategy, scheme_id
from automc.errors import DiskError, ValidationError
from automc.search._base import Observation, SchemeKey

if TYPE_CHECKING:
    from torch import nn

    from automc.compress.base import Method, Task
    from automc.compress.data import Data
    from automc.search.space import SearchSpace

COMPLETE, FAIL = "COMPLETE", "FAIL"
log = logging.getLogger("automc.search")


class StepFailed(Exception):
    """A step of a scheme's prefix failed earlier in this run (remembered in the cache directory)."""


def step_seed(run_seed: int, scheme: Sequence[str]) -> int:
    """The seed of the step that produces ``scheme``'s model: from the run's seed and the scheme's content hash."""
    digest = hashlib.sha256(f"{int(run_seed)}:{scheme_id(scheme)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class StepResult:
    """One evaluated scheme: validation and test accuracy (Wilson 95%), size, and ratios against the base model
    (``pr``, ``fr``, ``ar`` on test) and against its parent (``step_ar`` on validation, ``step_pr``)."""

    scheme: SchemeKey
    state: str  # "COMPLETE" | "FAIL"
    error: str = ""
    val_accuracy: float | None = None
    val_low: float | None = None
    val_high: float | None = None
    test_accuracy: float | None = None
    test_low: float | None = None
    test_high: float | None = None
    params: int | None = None
    flops: int | None = None
    pr: float | None = None
    fr: float | None = None
    ar: float | None = None  # relative change of test accuracy against the base model (the paper's AR)
    step_ar: float | None = None  # relative change of validation accuracy against the parent
    step_pr: float | None = None  # share of the parent's parameters this step removed
    seconds: float = 0.0  # the whole step, measuring included
    train_seconds: float = 0.0  # inside the method's compress call
    device: str = "cpu"
    fidelity: str = "search"  # "search" | "final"
    epochs: float | None = None
    data_fraction: float | None = None
    seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == COMPLETE

    def observation(self, round: int, evaluation_id: str) -> Observation:  # noqa: A002 - the contract's name
        """What a search strategy may see of this result (no test accuracy)."""
        return Observation(self.scheme, self.state, self.val_accuracy, self.pr, self.fr,
                           None if self.params is None else float(self.params),
                           None if self.flops is None else float(self.flops), round, evaluation_id, self.error)

    def record(self) -> dict[str, Any]:
        """The result under the knowledge base's Evaluation property names (``automc.kb.schema``)."""
        def num(v: float | int | None) -> float | None:
            return None if v is None else float(v)

        return {"state": self.state, "error": self.error, "accuracy": self.test_accuracy,
                "accuracy_low": self.test_low, "accuracy_high": self.test_high, "val_accuracy": self.val_accuracy,
                "val_accuracy_low": self.val_low, "val_accuracy_high": self.val_high, "params": num(self.params),
                "flops": num(self.flops), "pr": self.pr, "fr": self.fr, "ar": self.ar, "step_ar": self.step_ar,
                "step_pr": self.step_pr, "seconds": self.seconds, "train_seconds": self.train_seconds,
                "device": self.device, "fidelity": self.fidelity, "epochs": num(self.epochs),
                "data_fraction": num(self.data_fraction), "seed": self.seed, "steps": json.dumps(list(self.scheme))}


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_step(parent: nn.Module, strategy: Strategy, task: Task, *, base_params: int, seed: int,
             methods: Mapping[str, type[Method]] | None = None) -> tuple[nn.Module, float]:
    """Apply one strategy to ``parent`` (not modified) and return the child and the seconds its method took.

    Pure: no disk, no store. Seeds every generator (and the fine-tune loop, through the task) from ``seed``; the
    step removes ``step_ratio(gamma, base_params, params(parent), target_ratio_factor)`` of the parent.
    Raises whatever the method raises (``CompressionError``, ``ValidationError``, ...).
    """
    from automc.compress.base import step_ratio
    from automc.compress.metrics import count_params

    if methods is None:
        from automc.compress import METHODS as methods
    if strategy.method not in methods:
        from automc.errors import NotFoundError

        raise NotFoundError(f"no implementation of method {strategy.method!r}")
    params = strategy.params
    ratio = step_ratio(task.target_pr, base_params, count_params(parent),
                       float(params.get("target_ratio_factor", 1.0)))
    seed_everything(seed)
    t = time.perf_counter()
    child = methods[strategy.method]().compress(parent, dataclasses.replace(task, seed=seed), params, ratio)
    check_interrupt()  # Ctrl-C inside a library that catches everything (Torch-Pruning's tracing) is not lost
    return child, time.perf_counter() - t


# -- the model cache -----------------------------------------------------------------------------------------

class ModelCache:
    """Models of evaluated schemes on disk (one ``<scheme id>.pt`` each: state dict + architecture + meta), at
    most ``max_bytes`` in all, least recently used evicted first. Entries appear by atomic rename, so a crash
    never leaves a half-written one; an entry that does not load, for any reason, is dropped (and logged) and
    reported missing, and a folder removed meanwhile is created again: it is a cache."""

    def __init__(self, directory: str | Path, max_bytes: int = 2 * 2**30, *,
                 base_builder: Callable[[], nn.Module] | None = None) -> None:
        from automc._disk import writing

        self.directory = Path(directory)
        with writing(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.base_builder = base_builder
        self._stuck: set[Path] = set()  # unloadable entries that cannot be removed

    def path(self, key: Sequence[str]) -> Path:
        return self.directory / f"{scheme_id(key)}.pt"

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.path(key).is_file()

    def put(self, key: Sequence[str], model: nn.Module, meta: Mapping[str, Any] | None = None) -> None:
        """Store ``model`` (copied to the CPU) under ``key``, then evict down to the size cap.

        Raises ``DiskError`` when the cache's disk is full or failing (the run stops; never the step's fault).
        """
        import torch

        from automc.compress.saving import describe

        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        entry = {"key": json.dumps(list(key)), "arch": json.dumps(describe(model)),
                 "meta": json.dumps(dict(meta or {})), "state_dict": state}

        def save(f: Any) -> None:
            torch.save(entry, f)

        self._write(self.path(key), save, "wb", ".pt")
        self.evict(keep=self.path(key))

    def put_failure(self, key: Sequence[str], reason: str) -> None:
        """Remember that the step producing ``key`` failed (deterministic for the run's seed: never retried)."""
        text = json.dumps({"key": list(key), "reason": reason})
        self._write(self.directory / f"{scheme_id(key)}.fail", lambda f: f.write(text), "w", ".fail")

    def _write(self, path: Path, write: Callable[[Any], Any], mode: str, suffix: str) -> None:
        """Write ``path`` by atomic rename; a cache folder removed meanwhile is created again (it is a cache)."""
        from automc._disk import writing

        for attempt in range(3):
            try:
                with writing(path):
                    self.directory.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=self.directory)
                    try:
                        with os.fdopen(fd, mode) as f:
                            write(f)
                        os.replace(tmp, path)
                    except BaseException:
                        Path(tmp).unlink(missing_ok=True)
                        raise
                return
            except FileNotFoundError:  # the folder went away between mkdir and rename: once more
                if attempt == 2:
                    raise

    def failure(self, key: Sequence[str]) -> str | None:
        """Why the step producing ``key`` failed, when it did (a missing or unreadable marker: not known here)."""
        try:
            entry = json.loads((self.directory / f"{scheme_id(key)}.fail").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != list(key):
            return None
        return str(entry.get("reason") or "failed")

    def get(self, key: Sequence[str]) -> nn.Module | None:
        """The stored model of ``key`` (CPU, eval mode), or None when absent or unreadable."""
        entry = self.entry(key)
        return None if entry is None else entry[0]

    def entry(self, key: Sequence[str]) -> tuple[nn.Module, dict[str, Any]] | None:
        """The stored model of ``key`` and the ``meta`` it was put with, or None when absent or unreadable."""
        import torch

        from automc.compress.saving import rebuild

        p = self.path(key)
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
            if json.loads(entry["key"]) != list(key):
                return None  # a hash collision: treat as absent
            base = self.base_builder() if self.base_builder else None
            model = rebuild(json.loads(entry["arch"]), base)
            model.load_state_dict(entry["state_dict"], strict=True)
            meta = json.loads(entry["meta"])
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it (truncated, foreign, a pickle): rebuild
            self._drop(p, e)
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(p)  # last access, for LRU eviction
        return model.eval(), meta

    def _drop(self, p: Path, e: BaseException) -> None:
        """Remove an entry that does not load (the caller rebuilds it by replaying its steps) and log it once."""
        try:
            if p.is_dir() and not p.is_symlink():  # a folder in an entry's place: the cache's own name
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError:
            if p in self._stuck:
                return  # logged when first met: it fails the same way at every access
            self._stuck.add(p)
        log.warning("model cache entry %s does not load (%s); dropped, its model is rebuilt from its prefix",
                    p, _reason(e))

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last access, bytes, path) of every entry, oldest first."""
        out = []
        for p in self.directory.glob("*.pt"):
            if p.name.startswith(".tmp-"):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used entries until the total fits ``max_bytes`` (``keep`` stays)."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, p in entries:
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size


# -- the evaluator -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Measured:
    params: int
    flops: int
    val_correct: int
    val_total: int
    test_correct: int
    test_total: int

    @property
    def val(self) -> float:
        return self.val_correct / self.val_total if self.val_total else 0.0

    @property
    def test(self) -> float:
        return self.test_correct / self.test_total if self.test_total else 0.0


def _measure(model: nn.Module, task: Task) -> _Measured:
    from automc.compress.metrics import count_flops, count_params
    from automc.compress.train import evaluate

    model.to(task.device)
    val = evaluate(model, task.data, "val", device=task.device)
    test = evaluate(model, task.data, "test", device=task.device)
    return _Measured(count_params(model), count_flops(model, task.data.example_input()), val.correct, val.total,
                     test.correct, test.total)


def measured_result(scheme: SchemeKey, m: _Measured, parent: _Measured | None, base: _Measured, task: Task, *,
                    run_seed: int, seconds: float, train_seconds: float, fidelity: str,
                    data_fraction: float) -> StepResult:
    """The COMPLETE result of a measured child against its parent and the base model (also used by Ray workers)."""
    from automc.compress.metrics import accuracy_change, flops_reduction, param_reduction, wilson_interval

    vl, vh = wilson_interval(m.val_correct, m.val_total)
    tl, th = wilson_interval(m.test_correct, m.test_total)
    parent = parent or m
    return StepResult(
        scheme, COMPLETE, "", m.val, vl, vh, m.test, tl, th, m.params, m.flops,
        param_reduction(base.params, m.params), flops_reduction(base.flops, m.flops),
        accuracy_change(base.test, m.test), accuracy_change(parent.val, m.val),
        param_reduction(parent.params, m.params), seconds, train_seconds, str(task.device), fidelity,
        float(task.budget.epochs), data_fraction, step_seed(run_seed, scheme) if scheme else int(run_seed))


class Evaluator:
    """Evaluates schemes on one task, each from its parent's cached model (see the module docstring).

    Validation accuracy (the task's ``"val"`` split) is what search strategies select on; test accuracy is
    measured and recorded but reaches them only through ``StepResult``, never through ``Observation``.
    """

    def __init__(self, base_model: nn.Module, task: Task, *, cache_dir: str | Path, cache_bytes: int = 2 * 2**30,
                 seed: int = 0, space: SearchSpace, base_builder: Callable[[], nn.Module] | None = None,
                 methods: Mapping[str, type[Method]] | None = None, data_fraction: float = 1.0) -> None:
        if not task.data.size("val"):
            raise ValidationError("the task has no validation split: the search selects on it", field="val")
        self.base_model = base_model
        self.task = task
        self.seed = int(seed)
        self.space = space
        self.methods = methods
        self.data_fraction = float(data_fraction)
        # a partial, not a lambda: the evaluator must pickle (Ray workers)
        self._fresh = base_builder or functools.partial(copy.deepcopy, base_model)
        self.cache = ModelCache(cache_dir, cache_bytes, base_builder=self._fresh)
        self._base: StepResult | None = None
        self._base_measured: dict[int, tuple[Data, _Measured]] = {}  # id(data) -> (data kept alive, measured)

    # -- measuring ---------------------------------------------------------------------------------------
    def _base_on(self, task: Task) -> _Measured:
        key = id(task.data)
        if key not in self._base_measured:
            self._base_measured[key] = (task.data, _measure(self.base_model, task))
        return self._base_measured[key][1]

    def _result(self, scheme: SchemeKey, m: _Measured, parent: _Measured | None, base: _Measured, task: Task, *,
                seconds: float, train_seconds: float, fidelity: str, data_fraction: float) -> StepResult:
        return measured_result(scheme, m, parent, base, task, run_seed=self.seed, seconds=seconds,
                               train_seconds=train_seconds, fidelity=fidelity, data_fraction=data_fraction)

    def _fail(self, scheme: SchemeKey, error: str, seconds: float, train_seconds: float = 0.0, *,
              fidelity: str = "search", task: Task | None = None, data_fraction: float | None = None) -> StepResult:
        task = task or self.task
        return StepResult(scheme, FAIL, error, seconds=seconds, train_seconds=train_seconds,
                          device=str(task.device), fidelity=fidelity, epochs=float(task.budget.epochs),
                          data_fraction=self.data_fraction if data_fraction is None else data_fraction,
                          seed=step_seed(self.seed, scheme))

    def base(self) -> StepResult:
        """The base model's measurements (scheme ``()``), measured once."""
        if self._base is None:
            t = time.perf_counter()
            m = self._base_on(self.task)
            self._base = self._result((), m, None, m, self.task, seconds=time.perf_counter() - t,
                                      train_seconds=0.0, fidelity="search", data_fraction=self.data_fraction)
        return self._base

    # -- models ------------------------------------------------------------------------------------------
    def _step(self, parent: nn.Module, scheme: SchemeKey, task: Task) -> tuple[nn.Module, float]:
        base_params = self._base_on(self.task).params
        return run_step(parent, self.space.strategy(scheme[-1]), task, base_params=base_params,
                        seed=step_seed(self.seed, scheme), methods=self.methods)

    def _replay(self, scheme: SchemeKey) -> tuple[nn.Module, dict[str, Any]]:
        """The model of ``scheme`` and its cache meta: from the cache, or replayed from its nearest cached
        ancestor (each replayed step cached too). Raises what a replayed step raises."""
        start, entry = len(scheme), None
        while start > 0:
            entry = self.cache.entry(scheme[:start])
            if entry is not None:
                break
            start -= 1
        model, meta = entry if entry is not None else (self._fresh_base(), {})
        for i in range(start + 1, len(scheme) + 1):
            failed = self.cache.failure(scheme[:i])
            if failed:
                raise StepFailed(f"{scheme_id(scheme[:i])} failed: {failed}")
            model, _ = self._step(model, scheme[:i], self.task)
            meta = {"params": _params(model)}
            self.cache.put(scheme[:i], model, meta)
        return model, meta

    def _fresh_base(self) -> nn.Module:
        return copy.deepcopy(self.base_model)

    def model(self, scheme: Sequence[str]) -> nn.Module:
        """The (search-fidelity) model of ``scheme``; raises what rebuilding it raises."""
        return self._replay(tuple(scheme))[0]

    # -- evaluating --------------------------------------------------------------------------------------
    def refused(self, key: SchemeKey, t0: float) -> StepResult | None:
        """The FAIL result at once for a scheme the rules forbid or that failed before; None when it may run."""
        why = self.space.why_not(key)
        if why:
            return self._fail(key, f"not allowed: {why}", time.perf_counter() - t0)
        failed = self.cache.failure(key)
        if failed:
            return self._fail(key, failed, time.perf_counter() - t0)
        return None

    def evaluate(self, scheme: Sequence[str]) -> StepResult:
        """Apply the last strategy of ``scheme`` to its parent's model and measure the child.

        A step that fails (the method's ``CompressionError``, a rule the scheme breaks, a failing prefix, any
        other exception of the step) is a ``FAIL`` result with the reason; ``KeyboardInterrupt`` and a
        ``DiskError`` of the model cache propagate (neither is the step's doing).
        """
        key = tuple(scheme)
        if not key:
            return self.base()
        t0 = time.perf_counter()
        refused = self.refused(key, t0)
        if refused is not None:
            return refused
        base_m = self._base_on(self.task)
        try:
            parent, parent_meta = self._replay(key[:-1])
        except DiskError:
            raise  # the cache's disk, not the prefix: the run stops and resumes
        except Exception as e:  # noqa: BLE001 - a failing prefix fails its extensions
            return self._fail(key, f"its prefix cannot be built: {_reason(e)}", time.perf_counter() - t0)
        train_s = 0.0
        try:
            parent_m = self._parent_measurement(key[:-1], parent, parent_meta)
            child, train_s = self._step(parent, key, self.task)
            m = _measure(child, self.task)
        except DiskError:
            raise
        except Exception as e:  # noqa: BLE001 - a bad candidate is recorded, never retried
            self.cache.put_failure(key, _reason(e))
            return self._fail(key, _reason(e), time.perf_counter() - t0, train_s)
        self.cache.put(key, child, {"params": m.params, "val_correct": m.val_correct, "val_total": m.val_total})
        return self._result(key, m, parent_m, base_m, self.task, seconds=time.perf_counter() - t0,
                            train_seconds=train_s, fidelity="search", data_fraction=self.data_fraction)

    def _parent_measurement(self, key: SchemeKey, parent: nn.Module, meta: Mapping[str, Any]) -> _Measured:
        """The parent's parameters and validation accuracy: from its cache entry, else measured again."""
        if not key:
            return self._base_on(self.task)
        if "val_correct" in meta:
            return _Measured(int(meta["params"]), 0, int(meta["val_correct"]), int(meta["val_total"]), 0, 0)
        from automc.compress.train import evaluate

        parent.to(self.task.device)
        val = evaluate(parent, self.task.data, "val", device=self.task.device)
        return _Measured(_params(parent), 0, val.correct, val.total, 0, 0)

    def final(self, scheme: Sequence[str], task: Task, *, data_fraction: float = 1.0) -> tuple[StepResult, nn.Module]:
        """Re-apply the whole ``scheme`` from the base model on ``task`` (a higher fidelity: more epochs, all the
        training data) with the same per-step seeds, and measure it (``fidelity="final"``).

        Returns a FAIL result and the base model when a step fails.
        """
        key = tuple(scheme)
        t0 = time.perf_counter()
        base_m = self._base_on(task)
        model, parent_m, train_s = self._fresh_base(), base_m, 0.0
        for i in range(1, len(key) + 1):
            try:
                if i == len(key) and i > 1:
                    parent_m = _measure(model, task)
                model, seconds = self._step(model, key[:i], task)
                train_s += seconds
            except Exception as e:  # noqa: BLE001 - as in evaluate
                return (self._fail(key, _reason(e), time.perf_counter() - t0, fidelity="final", task=task,
                                   data_fraction=data_fraction), self._fresh_base())
        m = _measure(model, task)
        return (self._result(key, m, parent_m, base_m, task, seconds=time.perf_counter() - t0, train_seconds=train_s,
                             fidelity="final", data_fraction=data_fraction), model)


def _params(model: nn.Module) -> int:
    from automc.compress.metrics import count_params

    return count_params(model)


def _reason(e: BaseException) -> str:
    """One line saying why a step failed."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:500] if text else type(e).__name__
