"""A search step on the driver's side: ``prepare`` makes its job from its parent's model, an executor runs it
(``search.step.execute``) wherever it runs, and ``absorb`` takes the outcome into the run's model cache.

A scheme's model is its parent's model with one more strategy applied (``compress.scheme.apply_step``), measured by
``compress.scheme.measure``; every step distils from the base model (``Task.teacher``), never from its parent.
The parent comes from the model cache (``search.cache``) or is replayed from its nearest cached ancestor with the
same per-step seeds, so a scheme's model depends only on (run seed, scheme), never on the order of evaluation or on
the executor: the steps of one round are independent and may run side by side.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automc.catalog import scheme_id
from automc.compress.metrics import Measurement
from automc.errors import DiskError, ValidationError, reason
from automc.kb.states import State
from automc.search._base import SchemeKey
from automc.search.cache import ModelCache
from automc.search.step import (
    EvalResult,
    ScreenJob,
    StepJob,
    StepOutcome,
    WorkerContext,
    completed,
    cpu_state,
    execute,
    rebuild_model,
    step_seed,
)

if TYPE_CHECKING:
    from torch import nn

    from automc.compress.base import Method, Task
    from automc.compress.budget import FinalSplit
    from automc.search.space import SearchSpace

PREFIX_FAILED = "its prefix cannot be built: "
SCREEN_IMAGES = 1024  # training images that re-estimate BatchNorm statistics at rung 0 (``Evaluator.screen``)


# -- the driver's side ------------------------------------------------------------------------------------------

class Evaluator:
    """Prepares and absorbs the steps of one task's search, with its model cache (see the module docstring).

    Validation accuracy (the task's ``"val"`` split) is what search strategies select on; test accuracy is measured
    only for the base model and final models (``final``), never for a search step, and never reaches a strategy.
    """

    def __init__(self, base_model: nn.Module, task: Task, *, cache_dir: str | Path, cache_bytes: int = 2 * 2**30,
                 seed: int = 0, space: SearchSpace, base_builder: Callable[[], nn.Module] | None = None,
                 methods: Mapping[str, type[Method]] | None = None, data_fraction: float = 1.0) -> None:
        if not task.data.size("val"):
            raise ValidationError("the task has no validation split: the search selects on it", field="val")
        self.base_model = base_model
        # the base model is every step's teacher (replay and final included): distillation from the unpruned model
        self.task = task if task.teacher is not None else dataclasses.replace(task, teacher=base_model)
        self.seed = int(seed)
        self.space = space
        self.methods = methods
        self.data_fraction = float(data_fraction)
        # a partial, not a lambda: the evaluator must pickle (Ray workers)
        self._fresh = base_builder or functools.partial(copy.deepcopy, base_model)
        self.cache = ModelCache(cache_dir, cache_bytes, base_builder=self._fresh)
        self._base: EvalResult | None = None
        self._base_measured: dict[int, tuple[Any, Measurement]] = {}  # id(data) -> (data kept alive, measured)

    def base_measurement(self, task: Task | None = None) -> Measurement:
        """The base model measured on ``task`` (default: the search's), once per dataset."""
        from automc.compress.scheme import measure

        task = task or self.task
        if id(task.data) not in self._base_measured:
            self._base_measured[id(task.data)] = (task.data, measure(self.base_model, task))
        return self._base_measured[id(task.data)][1]

    def base(self) -> EvalResult:
        """The base model's measurements (scheme ``()``)."""
        if self._base is None:
            t = time.perf_counter()
            m = self.base_measurement()
            self._base = completed((), m, None, m, self.task, run_seed=self.seed, seconds=time.perf_counter() - t,
                                   train_seconds=0.0, fidelity="search", data_fraction=self.data_fraction)
        return self._base

    def context(self, *, portable: bool = True) -> WorkerContext:
        """What the run's workers share; ``portable``: with the data copied to the CPU (for other processes)."""
        import torch

        task, cpu = self.task, torch.device("cpu")
        base = self.base_measurement()
        base_model = copy.deepcopy(self.base_model).to(cpu)
        if portable:
            # the copy of the base model is the workers' template and teacher: one object, so it travels once
            teacher = base_model if task.teacher is self.base_model else task.teacher
            task = dataclasses.replace(task, data=task.data.to(cpu), device=cpu, teacher=teacher)
        return WorkerContext(task, base_model, base, self.seed, self.data_fraction,
                             torch.device(self.task.device).type, self.methods)

    def _failed(self, scheme: SchemeKey, error: str, seconds: float, *, task: Task | None = None,
                fidelity: str = "search", data_fraction: float | None = None) -> EvalResult:
        task = task or self.task
        return EvalResult(scheme, State.FAILED, error, seconds=seconds, device=str(task.device), fidelity=fidelity,
                          epochs=float(task.budget.epochs), seed=step_seed(self.seed, scheme),
                          data_fraction=self.data_fraction if data_fraction is None else data_fraction,
                          compute=0.0 if fidelity == "search" else None)  # nothing was trained

    def prepare(self, scheme: Sequence[str]) -> StepJob | EvalResult:
        """The job that evaluates ``scheme`` from its parent's model, or its result at once when there is nothing
        to run: the base model, a scheme the rules forbid, a step that failed before, a parent that cannot be
        built or measured. A ``DiskError`` of the model cache propagates (never the step's fault)."""
        from automc.compress.saving import describe

        key, t0 = tuple(scheme), time.perf_counter()
        if not key:
            return self.base()
        why = self.space.why_not(key)
        failed = f"not allowed: {why}" if why else self.cache.failure(key)
        if failed:
            return self._failed(key, failed, time.perf_counter() - t0)
        try:
            parent, meta = self._replay(key[:-1])
        except DiskError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing prefix fails its extensions
            return self._failed(key, PREFIX_FAILED + reason(e), time.perf_counter() - t0)
        try:
            parent_m = self._parent_measurement(key[:-1], parent, meta)
        except Exception as e:  # noqa: BLE001 - part of the step
            self.cache.put_failure(key, reason(e))
            return self._failed(key, reason(e), time.perf_counter() - t0)
        return StepJob(key, self.space.strategy(key[-1]), cpu_state(parent), describe(parent), parent_m,
                       step_seed(self.seed, key))

    def absorb(self, outcome: StepOutcome) -> EvalResult:
        """Take an executed step into the model cache (the child of a COMPLETE step; the reason of a FAILED one, so
        that it is never retried and its extensions fail fast); returns its result."""
        r, m = outcome.result, outcome.measured
        if r.ok and outcome.child_state is not None and outcome.child_arch is not None and m is not None:
            child = rebuild_model(outcome.child_arch, outcome.child_state, self._fresh())
            self.cache.put(r.scheme, child, {"params": m.params, "val_correct": m.val_correct,
                                             "val_total": m.val_total})
        elif not r.ok:
            self.cache.put_failure(r.scheme, r.error)
        return r

    def evaluate(self, scheme: Sequence[str]) -> EvalResult:
        """``prepare``, ``execute`` in this process, ``absorb``: one step, as ``SerialExecutor`` runs it."""
        job = self.prepare(scheme)
        return job if isinstance(job, EvalResult) else self.absorb(execute(job, self.context(portable=False)))

    def _step(self, parent: nn.Module, scheme: SchemeKey, task: Task) -> nn.Module:
        from automc.compress.scheme import apply_step

        return apply_step(parent, self.space.strategy(scheme[-1]), task, params_original=self.base_measurement().params,
                          seed=step_seed(self.seed, scheme), methods=self.methods)[0]

    def _replay(self, scheme: SchemeKey) -> tuple[nn.Module, dict[str, Any]]:
        """The model of ``scheme`` and its cache meta: from the cache, or replayed from its nearest cached
        ancestor (each replayed step cached too). Raises what a replayed step raises."""
        from automc.compress.metrics import count_params

        start, entry = len(scheme), None
        while start > 0:
            entry = self.cache.entry(scheme[:start])
            if entry is not None:
                break
            start -= 1
        model, meta = entry if entry is not None else (self._fresh(), {})
        for i in range(start + 1, len(scheme) + 1):
            failed = self.cache.failure(scheme[:i])
            if failed:
                raise RuntimeError(f"{scheme_id(scheme[:i])} failed: {failed}")
            model = self._step(model, scheme[:i], self.task)
            meta = {"params": count_params(model)}
            self.cache.put(scheme[:i], model, meta)
        return model, meta

    def prepare_screen(self, scheme: Sequence[str], *, recalibration_images: int = SCREEN_IMAGES,
                       val_images: int | None = None) -> ScreenJob | EvalResult:
        """The job of ``scheme``'s rung 0 (``step.screen``): its steps after its longest cached prefix, from that
        prefix's model; or its FAILED result at once (a scheme the rules forbid, a prefix that cannot be built)."""
        from automc.compress.saving import describe

        key, t0 = tuple(scheme), time.perf_counter()
        why = self.space.why_not(key)
        if not key or why:
            return self._failed(key, f"not allowed: {why or 'the base model'}", 0.0, fidelity="screen")
        start = len(key) - 1
        while start > 0 and key[:start] not in self.cache:
            start -= 1
        self.base_measurement()  # measured once per run, never the screen's compute
        try:
            model, _ = self._replay(key[:start])  # cached: loaded, not trained
        except DiskError:
            raise
        except Exception as e:  # noqa: BLE001 - a proposal that cannot be screened is simply not promoted
            return dataclasses.replace(self._failed(key, reason(e), time.perf_counter() - t0, fidelity="screen"),
                                       epochs=0.0, compute=0.0)
        steps = tuple((self.space.strategy(key[i - 1]), step_seed(self.seed, key[:i]))
                      for i in range(start + 1, len(key) + 1))
        return ScreenJob(key, steps, cpu_state(model), describe(model), int(recalibration_images), val_images)

    def screen(self, scheme: Sequence[str], *, recalibration_images: int = SCREEN_IMAGES,
               val_images: int | None = None) -> EvalResult:
        """Rung 0 of ``scheme`` (``fidelity="screen"``) in this process: its steps after its longest cached prefix
        applied with no fine-tuning (every ``*_epochs_factor`` times 0 epochs, the same per-step seeds), BatchNorm
        statistics re-estimated on ``recalibration_images`` training images, validation accuracy measured (on the
        first ``val_images`` validation images when given). Never cached and never remembered as a failure: a
        cheap look that decides which proposals get the search fidelity."""
        job = self.prepare_screen(scheme, recalibration_images=recalibration_images, val_images=val_images)
        return job if isinstance(job, EvalResult) else execute(job, self.context(portable=False)).result

    def model(self, scheme: Sequence[str]) -> nn.Module:
        """The (search-fidelity) model of ``scheme``; raises what rebuilding it raises."""
        return self._replay(tuple(scheme))[0]

    def _parent_measurement(self, key: SchemeKey, parent: nn.Module, meta: Mapping[str, Any]) -> Measurement:
        """The parent's parameters and validation accuracy: from its cache entry, else measured again."""
        from automc.compress.scheme import measure

        if not key:
            return self.base_measurement()
        if "val_correct" in meta:
            total = int(meta["val_total"])
            return Measurement(int(meta["params"]), 0, int(meta["val_correct"]) / total if total else 0.0, 0.0,
                               val_total=total, val_correct=int(meta["val_correct"]))
        return measure(parent, self.task, test=False)

    def final_split(self, scheme: Sequence[str], epochs: float, mode: str = "reapply") -> FinalSplit:
        """How ``epochs`` of final fine-tune are spent on ``scheme`` (``compress.budget.final_split``)."""
        from automc.compress.budget import final_split

        return final_split([self.space.epochs_factor(s) for s in scheme], float(epochs),
                           float(self.space.rules.max_epochs_factor_sum), mode)

    def final(self, scheme: Sequence[str], task: Task, *, mode: str = "reapply",
              data_fraction: float = 1.0) -> tuple[EvalResult, nn.Module]:
        """The final model of ``scheme`` on ``task`` (all the training data; ``task.budget.epochs`` is the TOTAL
        fine-tune, the same for every scheme, split by ``final_split``), measured with ``fidelity="final"``.

        ``mode`` "reapply": the whole scheme again from the base model, each step with its share of the total and the
        same per-step seeds, then a distillation polish from the base model with the rest. "polish": the searched
        (search-fidelity, cached) model of ``scheme``, polished for the whole total. Returns a FAILED result and the
        base model when a step fails.
        """
        from automc.compress.scheme import measure

        key, t0 = tuple(scheme), time.perf_counter()
        if task.teacher is None:
            task = dataclasses.replace(task, teacher=self.base_model)
        split = self.final_split(key, task.budget.epochs, mode)
        base_m = self.base_measurement(task)
        model, parent_m, train_s = self._fresh(), base_m, 0.0
        step_task = dataclasses.replace(task, budget=dataclasses.replace(task.budget, epochs=split.step_scale))
        try:
            if mode == "polish":
                parent, meta = self._replay(key[:-1])
                parent_m = self._parent_measurement(key[:-1], parent, meta)
                model = self.model(key)
            else:
                for i in range(1, len(key) + 1):
                    if i == len(key) and i > 1:
                        parent_m = measure(model, task, test=False)  # an intermediate model: no test
                    t = time.perf_counter()
                    model = self._step(model, key[:i], step_task)
                    train_s += time.perf_counter() - t
            t = time.perf_counter()
            self._polish(model, key, task, split.polish)
            train_s += time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - as in execute
            return (self._failed(key, reason(e), time.perf_counter() - t0, task=task, fidelity="final",
                                 data_fraction=data_fraction), self._fresh())
        result = completed(key, measure(model, task), parent_m, base_m, task, run_seed=self.seed,
                           seconds=time.perf_counter() - t0, train_seconds=train_s, fidelity="final",
                           data_fraction=data_fraction)
        # training compute in epoch-equivalents of the training split: the split's total, whatever the scheme
        return dataclasses.replace(result, compute=split.total), model

    def _polish(self, model: nn.Module, key: SchemeKey, task: Task, epochs: float) -> None:
        """Fine-tune ``model`` in place for ``epochs``, distilling from the base model (``task.teacher``) with the
        same loss weights as the methods' fine-tunes (``TrainBudget.distill_alpha``/``distill_temperature``)."""
        from automc.compress.scheme import seed_everything
        from automc.compress.train import finetune

        if epochs <= 0:
            return
        seed = step_seed(self.seed, (*key, "final polish"))  # its own seed: not the last step's again
        seed_everything(seed)
        b = task.budget
        finetune(model, dataclasses.replace(task, seed=seed), epochs, teacher=task.teacher,
                 kd_alpha=b.distill_alpha, kd_temperature=b.distill_temperature)
