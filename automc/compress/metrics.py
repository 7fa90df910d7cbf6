"""Measurements kept apart from every method: parameters, FLOPs, top-1 accuracy with a Wilson interval,
and the paper's relative ratios PR, FR, AR."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass per image, as ``torch.utils.flop_counter`` counts them.

    One multiply-accumulate counts as **2 FLOPs** (convolutions and matrix products only; BN, ReLU, pooling
    and additions are not counted), which matches the AutoMC paper's tables (ResNet-56 ≈ 0.25 GFLOPs).
    """
    x = example_input[:1]
    dev = next((p.device for p in model.parameters()), x.device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x.to(dev).float())
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy on ``total`` images with its 95% Wilson score interval."""

    correct: int
    total: int

    @property
    def top1(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def to_dict(self) -> dict[str, float | int]:
        lo, hi = self.interval
        return {"top1": self.top1, "correct": self.correct, "total": self.total,
                "ci95_low": lo, "ci95_high": hi}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def param_reduction(params_before: int, params_after: int) -> float:
    """PR = 1 - P'/P."""
    return 1.0 - params_after / params_before


def flops_reduction(flops_before: int, flops_after: int) -> float:
    """FR = 1 - F'/F."""
    return 1.0 - flops_after / flops_before


def accuracy_change(acc_before: float, acc_after: float) -> float:
    """AR = (acc' - acc) / acc, the paper's *relative* accuracy change."""
    return (acc_after - acc_before) / acc_before if acc_before else 0.0


@dataclass(frozen=True)
class Measurement:
    """Size and quality of one model: parameters, FLOPs (2 per MAC) and accuracy on validation and test."""

    params: int
    flops: int
    acc_val: float
    acc_test: float
    test_total: int = 0
    test_correct: int = 0
    val_total: int = 0
    val_correct: int = 0
    # per-image correctness on the test split (``compress.paired``: packed bits) and the test images' hash
    test_bits: str | None = None
    test_ids: str | None = None

    def to_dict(self) -> dict[str, float | int]:
        d = asdict(self)
        del d["test_bits"], d["test_ids"]
        lo, hi = wilson_interval(self.test_correct, self.test_total)
        d.update(acc_test_ci95_low=lo, acc_test_ci95_high=hi)
        return d


def evaluation_record(after: Measurement, base: Measurement,
                      parent: Measurement | None = None) -> dict[str, float | str | None]:
    """``after``'s measurements under the knowledge base's Evaluation property names, with its ratios against the
    base model (PR, FR, AR on test) and, given ``parent``, against the step's input (step AR on validation, step PR).

    Test accuracy, its interval and AR are None when ``after``'s test split was not measured (``test_total == 0``:
    a search step); the per-image test correctness comes along when it was kept."""
    tested = after.test_total > 0
    lo, hi = wilson_interval(after.test_correct, after.test_total)
    vlo, vhi = wilson_interval(after.val_correct, after.val_total)
    out: dict[str, float | str | None] = {
        "params": float(after.params), "flops": float(after.flops), "accuracy": after.acc_test if tested else None,
        "accuracy_low": lo if tested else None, "accuracy_high": hi if tested else None, "val_accuracy": after.acc_val,
        "val_accuracy_low": vlo if after.val_total else None, "val_accuracy_high": vhi if after.val_total else None,
        "pr": param_reduction(base.params, after.params), "fr": flops_reduction(base.flops, after.flops),
        "ar": accuracy_change(base.acc_test, after.acc_test) if tested and base.test_total else None}
    if tested and after.test_bits is not None:
        out.update(test_correct_bits=after.test_bits, test_ids_hash=after.test_ids)
    if parent is not None:
        out.update(step_ar=accuracy_change(parent.acc_val, after.acc_val),
                   step_pr=param_reduction(parent.params, after.params))
    return out
