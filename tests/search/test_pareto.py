"""Pareto masks and the reported front."""

from __future__ import annotations

import numpy as np
import pytest

from automc.kb.states import State
from automc.search._base import Observation
from automc.search.pareto import front, non_dominated


def test_mask_on_mixed_directions():
    pts = np.array([[0.9, 0.1], [0.8, 0.5], [0.7, 0.4], [0.9, 0.1], [0.5, 0.9], [0.4, 0.2]])
    assert non_dominated(pts, (True, True)).tolist() == [True, True, False, True, True, False]
    # minimising the second objective turns the order around
    assert non_dominated(pts, (True, False)).tolist() == [True, False, False, True, False, False]
    assert non_dominated(np.zeros((0, 2)), (True, True)).shape == (0,)
    with pytest.raises(ValueError):
        non_dominated(pts, (True,))


def test_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 6, size=(200, 3)).astype(float)
    mask = non_dominated(pts, (True, False, True))
    p = pts * np.array([1, -1, 1])
    brute = [not any((p[j] >= p[i]).all() and (p[j] > p[i]).any() for j in range(len(p))) for i in range(len(p))]
    assert mask.tolist() == brute


def obs(scheme, acc, pr, state="COMPLETE"):
    return Observation(tuple(scheme), state, acc, pr)


def test_front_of_complete_observations_sorted_by_pr():
    data = [obs("a", 0.90, 0.2), obs("b", 0.85, 0.5), obs("c", 0.80, 0.45), obs("d", 0.70, 0.7),
            obs("e", 0.99, 0.9, state=State.FAILED), Observation(("f",), "COMPLETE"), obs("g", float("nan"), 0.9)]
    assert [o.scheme for o in front(data)] == [("a",), ("b",), ("d",)]
    assert [o.scheme for o in front(data, target_pr=0.4)] == [("b",), ("d",)]
    # a scheme dominated overall can be on the front above the target
    assert [o.scheme for o in front(data[1:4], target_pr=0.45)] == [("b",), ("d",)]
    assert front(data, target_pr=0.95) == []
