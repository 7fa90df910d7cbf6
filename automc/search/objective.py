"""What a search optimises: the best validation accuracy among the schemes that meet the targets (PR ≥ γ, and
FR ≥ the FLOPs target when the user set one). The Pareto front (validation accuracy vs PR) is the second view, in
the store and the report (``search.pareto``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from automc.search._base import Observation

# A scheme that closes γ (``SearchSpace.closed``) lands within the rounding of channel counts of it: measured on
# ResNet-20, 0.4002-0.4040 for the six methods at γ = 0.4. Half a point below γ still counts as reaching it.
PR_TOLERANCE = 0.005


def meets(pr: float | None, fr: float | None, target_pr: float, target_fr: float | None = None) -> bool:
    """Whether measured ``pr`` (and ``fr``) reach the targets."""
    if pr is None or not math.isfinite(pr) or pr < float(target_pr) - PR_TOLERANCE:
        return False
    return target_fr is None or (fr is not None and math.isfinite(fr) and fr >= float(target_fr) - PR_TOLERANCE)


def feasible(obs: Observation, target_pr: float, target_fr: float | None = None) -> bool:
    """A COMPLETE observation with a validation accuracy that meets the targets."""
    return (obs.ok and obs.val_accuracy is not None and math.isfinite(obs.val_accuracy)
            and meets(obs.pr, obs.fr, target_pr, target_fr))


def ranked(observations: Iterable[Observation], target_pr: float, target_fr: float | None = None) -> list[Observation]:
    """The feasible observations, best validation accuracy first (then the scheme, for a stable order)."""
    return sorted((o for o in observations if feasible(o, target_pr, target_fr)),
                  key=lambda o: (-float(o.val_accuracy or 0.0), o.scheme))
