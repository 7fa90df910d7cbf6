"""Pareto fronts in pure numpy, shared by the search, the benchmarks and the reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from automc.search._base import Observation


def non_dominated(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the rows of ``points`` ``(n, m)`` that no other row dominates; equal rows all stay."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != len(maximize):
        raise ValueError(f"points must be (n, {len(maximize)}), got shape {pts.shape}")
    if not len(pts):
        return np.zeros(0, dtype=bool)
    # Flip signs so that larger is better everywhere.
    sign = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
    p = pts * sign
    ge = (p[:, None, :] >= p[None, :, :]).all(-1)  # ge[j, i]: j at least as good as i everywhere
    gt = (p[:, None, :] > p[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)
    return ~dominated


def front(observations: Iterable[Observation], target_pr: float | None = None) -> list[Observation]:
    """The non-dominated complete observations on (validation accuracy, PR), both maximised, optionally only
    those that reach ``target_pr`` (``objective.meets``); sorted by PR (then scheme)."""
    from automc.search.objective import meets

    obs = [o for o in observations if o.ok and o.val_accuracy is not None and o.pr is not None
           and np.isfinite(o.val_accuracy) and np.isfinite(o.pr)]
    if target_pr is not None:
        obs = [o for o in obs if meets(o.pr, o.fr, target_pr)]
    if not obs:
        return []
    mask = non_dominated(np.array([[o.val_accuracy, o.pr] for o in obs]), (True, True))
    return sorted((o for o, keep in zip(obs, mask, strict=True) if keep), key=lambda o: (o.pr, o.scheme))
