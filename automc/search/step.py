"""A search step on the worker's side, as plain data: a ``StepJob`` in (the parent model's state and architecture,
the strategy, the seed), ``execute`` applies and measures it (``compress.scheme``), a ``StepOutcome`` out. Every
executor runs steps through ``execute``; it never touches the store or the model cache."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from automc.catalog import Strategy, scheme_id
from automc.compress.metrics import Measurement, evaluation_record
from automc.errors import reason
from automc.kb.states import State
from automc.search._base import Observation, SchemeKey

if TYPE_CHECKING:
    import torch
    from torch import nn

    from automc.compress.base import Method, Task


def step_seed(run_seed: int, scheme: Sequence[str]) -> int:
    """The seed of the step that produces ``scheme``'s model: from the run's seed and the scheme's content hash."""
    digest = hashlib.sha256(f"{int(run_seed)}:{scheme_id(scheme)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class EvalResult:
    """One evaluated scheme: ``measured`` holds its Evaluation properties (``compress.metrics.evaluation_record``:
    validation accuracy with its Wilson 95% interval, size, ratios to the base model and to its parent; test accuracy
    and the per-image test record only for a final model and the base, None for a search step)."""

    scheme: SchemeKey
    state: str  # State.COMPLETE | State.FAILED
    error: str = ""
    measured: Mapping[str, float | str | None] = field(default_factory=dict)
    seconds: float = 0.0  # the whole step, measuring included
    train_seconds: float = 0.0  # inside the method's compress call
    device: str = "cpu"
    fidelity: str = "search"  # "search" | "final"
    epochs: float | None = None
    data_fraction: float | None = None
    seed: int | None = None
    compute: float | None = None  # training compute of the step, measuring included (``compress.compute``)

    @property
    def ok(self) -> bool:
        return self.state == State.COMPLETE

    # what was measured, by the names the search uses (None when not measured: a FAILED step)
    val_accuracy = property(lambda self: self.measured.get("val_accuracy"))
    val_low = property(lambda self: self.measured.get("val_accuracy_low"))
    val_high = property(lambda self: self.measured.get("val_accuracy_high"))
    test_accuracy = property(lambda self: self.measured.get("accuracy"))
    test_low = property(lambda self: self.measured.get("accuracy_low"))
    test_high = property(lambda self: self.measured.get("accuracy_high"))
    pr = property(lambda self: self.measured.get("pr"))
    fr = property(lambda self: self.measured.get("fr"))
    ar = property(lambda self: self.measured.get("ar"))
    step_ar = property(lambda self: self.measured.get("step_ar"))
    step_pr = property(lambda self: self.measured.get("step_pr"))
    params = property(lambda self: _int(self.measured.get("params")))
    flops = property(lambda self: _int(self.measured.get("flops")))

    def observation(self, round: int, evaluation_id: str) -> Observation:  # noqa: A002 - the contract's name
        """What a search strategy may see of this result (no test accuracy)."""
        m = self.measured
        return Observation(self.scheme, str(self.state), m.get("val_accuracy"), m.get("pr"), m.get("fr"),
                           m.get("params"), m.get("flops"), round, evaluation_id, self.error)

    def record(self) -> dict[str, Any]:
        """The result under the knowledge base's Evaluation property names (``automc.kb.schema``)."""
        return {**self.measured, "state": str(self.state), "error": self.error, "seconds": self.seconds,
                "train_seconds": self.train_seconds, "device": self.device, "fidelity": self.fidelity,
                "epochs": self.epochs, "data_fraction": self.data_fraction, "seed": self.seed,
                "compute": self.compute, "steps": json.dumps(list(self.scheme))}


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class StepJob:
    """One step to run, as plain data: the parent model (CPU state dict + ``saving.describe`` architecture) and its
    measurement, the strategy to apply and the step's seed."""

    scheme: SchemeKey  # the child's scheme; its last id is ``strategy.id``
    strategy: Strategy
    parent_state: dict[str, torch.Tensor]
    parent_arch: dict[str, Any]
    parent: Measurement  # the parent's parameters and validation accuracy (step_ar, step_pr)
    seed: int


@dataclass(frozen=True)
class ScreenJob:
    """Rung 0 of one proposal, as plain data: the model of its longest cached prefix, the strategies after it with
    their step seeds (applied with no fine-tuning), and how to score it: BatchNorm re-estimated on
    ``recalibration_images`` training images, validation accuracy on the first ``val_images`` (all when None)."""

    scheme: SchemeKey
    steps: tuple[tuple[Strategy, int], ...]
    parent_state: dict[str, torch.Tensor]
    parent_arch: dict[str, Any]
    recalibration_images: int
    val_images: int | None = None


@dataclass(frozen=True)
class StepOutcome:
    """What ``execute`` sends back: the result (COMPLETE or FAILED with its reason) and, when COMPLETE, the child."""

    result: EvalResult
    child_state: dict[str, torch.Tensor] | None = None
    child_arch: dict[str, Any] | None = None
    measured: Measurement | None = None
    worker: str = ""  # host:pid of the process that ran it


@dataclass(frozen=True)
class WorkerContext:
    """What every step of a run shares, sent to each worker once: the task (data on the CPU for another process;
    ``device`` is where steps run), the base model as the template parents are rebuilt into and as every step's
    teacher (``Task.teacher``), its measurement."""

    task: Task
    base_model: nn.Module
    base: Measurement
    run_seed: int
    data_fraction: float = 1.0
    device: str = "cpu"
    methods: Mapping[str, type[Method]] | None = None

    def on_device(self) -> WorkerContext:
        """This context with the task's data and teacher (the base model unless the task has another) on ``device``
        (the first CUDA device this process sees); once per worker process."""
        import torch

        dev = torch.device(self.device)
        task = self.task
        if task.device != dev or task.data.device != dev:
            task = dataclasses.replace(task, data=task.data.to(dev), device=dev)
        # moved in place, never copied: the teacher is normally the base model itself, the parents' template
        teacher = (self.base_model if task.teacher is None else task.teacher).to(dev).eval()
        if task.teacher is not teacher:
            task = dataclasses.replace(task, teacher=teacher)
        return self if task is self.task else dataclasses.replace(self, task=task)

    def failed(self, scheme: SchemeKey, error: str, seconds: float = 0.0, train_seconds: float = 0.0,
               compute: float | None = None) -> StepOutcome:
        """A FAILED outcome of ``scheme`` (the step raised, or its worker was lost) with the compute it spent."""
        device = str(self.task.device) if str(self.task.device).split(":")[0] == self.device else self.device
        return StepOutcome(EvalResult(scheme, State.FAILED, error, seconds=seconds, train_seconds=train_seconds,
                                      device=device, epochs=float(self.task.budget.epochs),
                                      data_fraction=self.data_fraction, seed=step_seed(self.run_seed, scheme),
                                      compute=compute),
                           worker=worker_name())


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


def execute(job: StepJob | ScreenJob, ctx: WorkerContext) -> StepOutcome:
    """Rebuild the parent, apply the job's strategy, measure the child: what every executor runs for a step (and
    for a screening, ``screen``).

    Never raises for a bad candidate: any exception of the step is a FAILED outcome with the reason. The step's
    compute (the method's training and searches, measuring validation accuracy) is counted by ``compress.compute``.
    """
    if isinstance(job, ScreenJob):
        return screen(job, ctx)
    from automc.compress.compute import metered
    from automc.compress.saving import describe
    from automc.compress.scheme import apply_step, measure

    t0 = time.perf_counter()
    train_s = 0.0
    with metered(ctx.task.data) as meter:
        try:
            parent = rebuild_model(job.parent_arch, job.parent_state, ctx.base_model)
            t = time.perf_counter()
            child, _ = apply_step(parent, job.strategy, ctx.task, params_original=ctx.base.params, seed=job.seed,
                                  methods=ctx.methods)
            train_s = time.perf_counter() - t
            m = measure(child, ctx.task, test=False)  # test accuracy is for final models only
        except Exception as e:  # noqa: BLE001 - a bad candidate is recorded, never retried
            return ctx.failed(job.scheme, reason(e), time.perf_counter() - t0, train_s, compute=meter.epochs)
    result = completed(job.scheme, m, job.parent, ctx.base, ctx.task, run_seed=ctx.run_seed,
                       seconds=time.perf_counter() - t0, train_seconds=train_s, fidelity="search",
                       data_fraction=ctx.data_fraction, compute=meter.epochs)
    return StepOutcome(result, cpu_state(child), describe(child), m, worker_name())


def screen(job: ScreenJob, ctx: WorkerContext) -> StepOutcome:
    """Rung 0 of a proposal (``fidelity="screen"``): its new steps with no fine-tuning (every epochs factor times 0,
    the same per-step seeds), BatchNorm re-estimated, validation accuracy measured; no child model comes back
    (a screening is never cached). A failure is a FAILED outcome with its compute."""
    from automc.compress.compute import metered
    from automc.compress.layers import recalibrate_bn
    from automc.compress.scheme import apply_step, measure

    t0 = time.perf_counter()
    task = dataclasses.replace(ctx.task, budget=dataclasses.replace(ctx.task.budget, epochs=0.0))
    with metered(task.data) as meter:
        try:
            model = rebuild_model(job.parent_arch, job.parent_state, ctx.base_model)
            for strategy, seed in job.steps:
                model = apply_step(model, strategy, task, params_original=ctx.base.params, seed=seed,
                                   methods=ctx.methods)[0]
            batch = int(task.budget.batch_size)
            model.to(task.device)
            recalibrate_bn(model, (x for x, _ in task.data.batches(
                "train", batch, augment=False, max_batches=max(1, -(-int(job.recalibration_images) // batch)))))
            m = measure(model, task, test=False, val_images=job.val_images)
        except Exception as e:  # noqa: BLE001 - a proposal that cannot be screened is simply not promoted
            out = ctx.failed(job.scheme, reason(e), time.perf_counter() - t0, compute=meter.epochs)
            return dataclasses.replace(out, result=as_screen(out.result))
    result = completed(job.scheme, m, None, ctx.base, task, run_seed=ctx.run_seed, seconds=time.perf_counter() - t0,
                       train_seconds=0.0, fidelity="screen", data_fraction=ctx.data_fraction, compute=meter.epochs)
    return StepOutcome(result, measured=m, worker=worker_name())


def as_screen(result: EvalResult) -> EvalResult:
    """``result`` (a failure made for a step: a lost worker, a refused scheme) as the screening it was."""
    return dataclasses.replace(result, fidelity="screen", epochs=0.0)


def completed(scheme: SchemeKey, m: Measurement, parent: Measurement | None, base: Measurement, task: Task, *,
              run_seed: int, seconds: float, train_seconds: float, fidelity: str, data_fraction: float,
              compute: float | None = None) -> EvalResult:
    return EvalResult(scheme, State.COMPLETE, "", evaluation_record(m, base, parent or m), seconds, train_seconds,
                      str(task.device), fidelity, float(task.budget.epochs), data_fraction,
                      step_seed(run_seed, scheme) if scheme else int(run_seed), compute)


