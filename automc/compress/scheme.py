"""Apply a compression scheme: its strategies in order, each on the previous step's output.

Step ``i`` removes ``step_ratio(gamma, P0, P_current, target_ratio_factor_i)`` of the current model's
parameters; after each step the model is measured (parameters, FLOPs, validation and test accuracy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from automc.catalog import Scheme
from automc.compress.base import Method, Task, step_ratio
from automc.compress.metrics import (
    Measurement,
    accuracy_change,
    count_flops,
    count_params,
    flops_reduction,
    param_reduction,
    wilson_interval,
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
        lo, hi = wilson_interval(self.after.test_correct, self.after.test_total)
        return {"params": float(self.after.params), "flops": float(self.after.flops),
                "accuracy": self.after.acc_test, "accuracy_low": lo, "accuracy_high": hi,
                "val_accuracy": self.after.acc_val, "ar": self.ar, "pr": self.pr, "fr": self.fr,
                "seconds": self.seconds, "steps": [s.to_dict() for s in self.steps]}


def measure(model: nn.Module, task: Task) -> Measurement:
    """Parameters, FLOPs (2 per MAC) and validation/test accuracy of ``model`` on ``task``."""
    model.to(task.device)
    test = evaluate(model, task.data, "test", device=task.device)
    val = evaluate(model, task.data, "val", device=task.device) if task.data.size("val") else test
    return Measurement(count_params(model), count_flops(model, task.data.example_input()), val.top1,
                       test.top1, test.total, test.correct)


def apply_scheme(model: nn.Module, scheme: Scheme, task: Task, *,
                 methods: Mapping[str, type[Method]] | None = None,
                 progress: Callable[[str], None] | None = None,
                 before: Measurement | None = None) -> SchemeResult:
    """Apply ``scheme``'s strategies in order to (a copy of) ``model``; ``model`` itself is not modified.

    ``methods`` defaults to the registry ``automc.compress.METHODS``; raises ``NotFoundError`` for a method
    without an implementation and whatever the methods raise (``CompressionError``, ``ValidationError``).
    """
    if methods is None:
        from automc.compress import METHODS

        methods = METHODS
    for s in scheme.strategies:
        if s.method not in methods:
            raise NotFoundError(f"no implementation of method {s.method!r}; available: {', '.join(methods)}")
    t0 = time.perf_counter()
    before = before or measure(model, task)
    current, steps = model, []
    for i, strategy in enumerate(scheme.strategies, 1):
        params = strategy.params
        ratio = step_ratio(task.target_pr, before.params, count_params(current),
                           float(params.get("target_ratio_factor", 1.0)))
        if progress:
            progress(f"step {i}/{len(scheme)}: {strategy.id}, removing {ratio:.1%} of the current parameters")
        t = time.perf_counter()
        current = methods[strategy.method]().compress(current, task, params, ratio)
        m = measure(current, task)
        steps.append(StepResult(strategy.id, strategy.method, dict(params), ratio, m, time.perf_counter() - t))
        if progress:
            progress(f"step {i}/{len(scheme)} done: {m.params:,} parameters, test accuracy {m.acc_test:.2%}")
    after = steps[-1].measurement if steps else before
    return SchemeResult(scheme.text, current, before, after, steps, time.perf_counter() - t0)
