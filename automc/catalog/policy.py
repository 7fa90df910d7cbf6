"""A per-layer pruning policy as text (the PLP method's ``layer_keep`` hyperparameter): keep ratios in (0, 1], one
per prunable layer, joined by ``:``; ``uniform`` means one ratio for every layer, solved for the step's target.
Pure arithmetic, no torch: the catalogue parses strategies with it (``compress.layerwise`` builds on it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from automc.errors import ValidationError

Policy = tuple[float, ...]
POLICY_SEP = ":"
UNIFORM = "uniform"
MAX_LAYERS = 4096  # a policy text longer than this many ratios is refused before parsing


def kept(keep: float, channels: int) -> int:
    """Channels a layer of ``channels`` keeps at keep ratio ``keep``: rounded half up, at least 1."""
    return max(1, min(channels, math.floor(float(keep) * channels + 0.5)))


def format_policy(policy: Sequence[float]) -> str:
    """``0.5:0.25:1``: each ratio with at most 4 decimals (enough to give back the same channel counts)."""
    return POLICY_SEP.join(f"{float(k):.4f}".rstrip("0").rstrip(".") for k in policy)


def parse_policy(text: str) -> Policy:
    """The keep ratios of a policy's text; raises ``ValidationError`` naming the bad part."""
    parts = str(text).strip().split(POLICY_SEP)
    if len(parts) > MAX_LAYERS:
        raise ValidationError(f"{len(parts)} keep ratios, more than {MAX_LAYERS}", field="layer_keep")
    out = []
    for i, raw in enumerate(parts):
        try:
            k = float(raw)
        except ValueError:
            raise ValidationError(f"keep ratio {i + 1} is {raw!r}, not a number; expected ratios in (0, 1] joined "
                                  f"by {POLICY_SEP!r} or {UNIFORM!r}", field="layer_keep") from None
        if not (0.0 < k <= 1.0):
            raise ValidationError(f"keep ratio {i + 1} is {raw}, outside (0, 1]", field="layer_keep")
        out.append(k)
    return tuple(out)


def is_policy_text(text: str) -> bool:
    """Whether ``text`` is ``uniform`` or a valid policy."""
    if text == UNIFORM:
        return True
    try:
        parse_policy(text)
    except ValidationError:
        return False
    return True

__all__ = ["MAX_LAYERS", "POLICY_SEP", "UNIFORM", "Policy", "format_policy", "is_policy_text", "kept",
           "parse_policy"]
