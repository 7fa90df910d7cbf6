"""Apply a compression scheme: its strategies in order, each on the previous step's output, every fine-tune
distilling from the scheme's input model (``Task.teacher``), not from the previous step's output.

Step ``i`` removes ``step_ratio(gamma, P0, P_current, target_ratio_factor_i)`` of the current model's
parameters; after each step the model is measured (parameters, FLOPs, validation and test accuracy).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from automc._interrupt import check as check_interrupt
from automc.catalog import Scheme, Strategy
from automc.compress.base import Method, Task, step_ratio
from automc.compress.metrics import (
    Accuracy,
    Measurement,
    accuracy_change,
    count_flops,
    count_params,
    evaluation_record,
    flops_reduction,
    param_reduction,
)
from automc.compress.train import evaluate
from automc.errors import NotFoundError


@dataclass(frozen=True)
class StepResult:
    """One applied strategy: what was asked (``ratio`` of the current model) and what came out."""

    strategy: str
    method: str
    params: dict[str, Any]
    ratio: float
    measurement: Measurement
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "method": self.method, "params": dict(self.params),
                "ratio": self.ratio, "seconds": self.seconds, **self.measurement.to_dict()}


@dataclass
class SchemeResult:
    """The compressed model, the measurements before and after, and every step."""

    scheme: str
    model: nn.Module
    before: Measurement
    after: Measurement
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def pr(self) -> float:
        return param_reduction(self.before.params, self.after.params)

    @property
    def fr(self) -> float:
        return flops_reduction(self.before.flops, self.after.flops)

    @property
    def ar(self) -> float:
        """Relative change of test accuracy, (acc' - acc) / acc."""
        return accuracy_change(self.before.acc_test, self.after.acc_test)

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` object."""
        return {"scheme": self.scheme, "params_before": self.before.params, "params_after": self.after.params,
                "flops_before": self.before.flops, "flops_after": self.after.flops, "pr": self.pr,
                "fr": self.fr, "acc_before": self.before.acc_test, "acc_after": self.after.acc_test,
                "val_acc_before": self.before.acc_val, "val_acc_after": self.after.acc_val, "ar": self.ar,
                "seconds": self.seconds, "steps": [s.to_dict() for s in self.steps]}

    def evaluation_record(self) -> dict[str, Any]:
        """The measurements under the knowledge base's Evaluation property names."""
        return {**evaluation_record(self.after, self.before), "seconds": self.seconds,
                "steps": [s.to_dict() for s in self.steps]}


def measure(model: nn.Module, task: Task, *, test: bool = True, val_images: int | None = None) -> Measurement:
    """Parameters, FLOPs (2 per MAC) and validation/test accuracy of ``model`` on ``task``, with the per-image test
    correctness (``compress.paired``) for paired tests (``test=False``: the test split is not touched, its fields
    stay 0 and None: a search step). ``val_images``: validation accuracy on the split's first that many images
    (up to one image per batch more when they do not split into equal batches of at most 500)."""
    from automc.compress.paired import encode_bits, images_hash, per_image_correct

    model.to(task.device)
    correct = per_image_correct(model, task.data, "test", device=task.device) if test else None
    t = Accuracy(int(correct.sum()), int(correct.size)) if correct is not None else None
    n_val = task.data.size("val")
    if val_images is not None and 0 < val_images < n_val:
        # equal batches of at most 500 covering the first val_images images (a few more when it does not divide)
        n_batches = -(-int(val_images) // 500)
        v = evaluate(model, task.data, "val", device=task.device, batch_size=-(-int(val_images) // n_batches),
                     max_batches=n_batches)
    else:
        v = evaluate(model, task.data, "val", device=task.device) if n_val else t
    if v is None:
        raise ValueError("the task has neither a validation nor a measured test split")
    return Measurement(count_params(model), count_flops(model, task.data.example_input()), v.top1,
                       t.top1 if t else 0.0, t.total if t else 0, t.correct if t else 0, v.total, v.correct,
                       encode_bits(correct) if correct is not None else None,
                       images_hash(task.data, "test") if correct is not None else None)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def apply_step(model: nn.Module, strategy: Strategy, task: Task, *, params_original: int,
               methods: Mapping[str, type[Method]] | None = None, seed: int | None = None) -> tuple[nn.Module, float]:
    """Apply one strategy to ``model`` (not modified): remove ``step_ratio(gamma, P0, P_current, factor)`` of it.

    Returns the new model and the ratio asked. ``seed`` (the search's per-step seed) seeds every generator and the
    fine-tune loop first. Raises ``NotFoundError`` for a method without an implementation and whatever the method
    raises (``CompressionError``, ``ValidationError``).
    """
    if methods is None:
        from automc.compress import METHODS as methods
    if strategy.method not in methods:
        raise NotFoundError(f"no implementation of method {strategy.method!r}; available: {', '.join(methods)}")
    params = strategy.params
    ratio = step_ratio(task.target_pr, params_original, count_params(model),
                       float(params.get("target_ratio_factor", 1.0)))
    if seed is not None:
        seed_everything(seed)
        task = dataclasses.replace(task, seed=seed)
    child = methods[strategy.method]().compress(model, task, params, ratio)
    check_interrupt()  # a Ctrl-C that a library swallowed (Torch-Pruning's tracing) is not lost
    return child, ratio


def apply_scheme(model: nn.Module, scheme: Scheme, task: Task, *,
                 methods: Mapping[str, type[Method]] | None = None,
                 progress: Callable[[str], None] | None = None,
                 before: Measurement | None = None) -> SchemeResult:
    """Apply ``scheme``'s strategies in order to (a copy of) ``model``; ``model`` itself is not modified.

    ``methods`` defaults to the registry ``automc.compress.METHODS``; raises ``NotFoundError`` for a method
    without an implementation and whatever the methods raise (``CompressionError``, ``ValidationError``).
    Unless ``task`` has a teacher, ``model`` is every step's teacher (in eval mode, moved to the task's device).
    """
    if methods is None:
        from automc.compress import METHODS

        methods = METHODS
    for s in scheme.strategies:
        if s.method not in methods:
            raise NotFoundError(f"no implementation of method {s.method!r}; available: {', '.join(methods)}")
    t0 = time.perf_counter()
    if task.teacher is None and len(scheme.strategies) > 1:
        # later steps distil from the unpruned model, not the previous step's output; with one step the input is
        # the teacher anyway, and a task without one keeps a single method's fine-tunes exactly as they were
        task = dataclasses.replace(task, teacher=model)
    before = before or measure(model, task)
    current, steps = model, []
    for i, strategy in enumerate(scheme.strategies, 1):
        if progress:
            ratio = step_ratio(task.target_pr, before.params, count_params(current),
                               float(strategy.params.get("target_ratio_factor", 1.0)))
            progress(f"step {i}/{len(scheme)}: {strategy.id}, removing {ratio:.1%} of the current parameters")
        t = time.perf_counter()
        current, ratio = apply_step(current, strategy, task, params_original=before.params, methods=methods)
        m = measure(current, task)
        steps.append(StepResult(strategy.id, strategy.method, dict(strategy.params), ratio, m,
                                time.perf_counter() - t))
        if progress:
            progress(f"step {i}/{len(scheme)} done: {m.params:,} parameters, test accuracy {m.acc_test:.2%}")
    after = steps[-1].measurement if steps else before
    return SchemeResult(scheme.text, current, before, after, steps, time.perf_counter() - t0)
