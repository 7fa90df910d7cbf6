"""Quality indicators of a search: the hypervolume of (validation accuracy, PR) above (accuracy 0, PR gamma), and
the best validation accuracy at PR >= gamma.

The hypervolume comes from pymoo's ``HV`` (Optuna 5 only has a private one, ``optuna._hypervolume``). Only
schemes with PR above the target count: the reference point sits at PR = gamma. With the catalogue's strategies,
whose pruning amounts are fractions of gamma (``target_ratio_factor``), schemes land at PR gamma plus a rounding
overshoot, so the hypervolume mostly measures that overshoot; the best accuracy at PR >= gamma is what a user who
asked for gamma gets, and the benchmark reports both.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from automc.search._base import Observation


def hypervolume(points: np.ndarray, target_pr: float) -> float:
    """Area dominated by ``points`` (rows of (val accuracy, PR), both maximised) above (0, ``target_pr``)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    keep = np.isfinite(pts).all(axis=1) & (pts[:, 0] > 0.0) & (pts[:, 1] > target_pr)
    if not keep.any():
        return 0.0
    from pymoo.indicators.hv import HV

    # pymoo minimises: negate both objectives and the reference point
    return float(HV(ref_point=np.array([0.0, -float(target_pr)]))(-pts[keep]))


def anytime_hypervolume(observations: Iterable[Observation], target_pr: float) -> list[float]:
    """The hypervolume after each evaluation, in the order given (FAILs and PR <= gamma leave it unchanged)."""
    points: list[tuple[float, float]] = []
    out: list[float] = []
    current = 0.0
    for obs in observations:
        if obs.ok and obs.val_accuracy is not None and obs.pr is not None and obs.pr > target_pr:
            points.append((float(obs.val_accuracy), float(obs.pr)))
            current = hypervolume(np.array(points), target_pr)
        out.append(current)
    return out


def anytime_best_at_target(observations: Iterable[Observation], target_pr: float) -> list[float]:
    """The best validation accuracy among schemes reaching PR gamma (``objective.feasible``) after each evaluation
    (0 before the first)."""
    from automc.search.objective import feasible

    out: list[float] = []
    current = 0.0
    for obs in observations:
        if feasible(obs, target_pr):
            current = max(current, float(obs.val_accuracy))
        out.append(current)
    return out
