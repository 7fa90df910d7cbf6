"""The final fine-tune's budget: one total for every scheme, split between its steps and a distillation polish.

``--final-epochs E`` is the whole training of a final model. In ``reapply`` mode step ``i`` of a scheme trains
``E × f_i / cap`` epochs (``f_i``: the sum of its ``*_epochs_factor`` values, internal searches such as LeGR's
evolution included; ``cap``: the catalogue's ``max_epochs_factor_sum``) and a polish distilling from the base model
trains the rest, ``E × (1 − Σf / cap)``. Since every method multiplies its factors by ``budget.epochs``, giving each
step ``budget.epochs = E / cap`` is that share. In ``polish`` mode the searched model is continued and the polish
trains all of ``E``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from automc.errors import ValidationError

FINAL_MODES = ("reapply", "polish")


@dataclass(frozen=True)
class FinalSplit:
    """How a final model's ``total`` epochs are spent: ``steps[i]`` epochs by step ``i`` (each method sees
    ``budget.epochs = step_scale``), then ``polish`` epochs of distillation from the base model."""

    total: float
    mode: str
    steps: tuple[float, ...]
    step_scale: float
    polish: float

    def to_dict(self) -> dict[str, object]:
        return {"total": self.total, "mode": self.mode, "steps": list(self.steps), "step_scale": self.step_scale,
                "polish": self.polish}


def final_split(factors: Sequence[float], total: float, cap: float, mode: str = "reapply") -> FinalSplit:
    """The split of ``total`` final epochs for a scheme whose steps have epoch factors ``factors`` (see the module
    docstring). A scheme over the cap (never proposed: the search rules forbid it) is scaled down to fit, so the
    split always sums to ``total``. Raises ``ValidationError`` for a bad mode, total or cap."""
    if mode not in FINAL_MODES:
        raise ValidationError(f"must be one of {', '.join(FINAL_MODES)}, got {mode!r}", field="--final-mode")
    if not (math.isfinite(total) and total >= 0):
        raise ValidationError(f"must be ≥ 0, got {total}", field="--final-epochs")
    if not (math.isfinite(cap) and cap > 0):
        raise ValidationError(f"must be positive, got {cap}", field="max_epochs_factor_sum")
    fs = [max(0.0, float(f)) for f in factors]
    if mode == "polish":
        return FinalSplit(float(total), mode, tuple(0.0 for _ in fs), 0.0, float(total))
    scale = float(total) / max(float(cap), sum(fs))
    steps = tuple(f * scale for f in fs)
    return FinalSplit(float(total), mode, steps, scale, max(0.0, float(total) - sum(steps)))
