"""Hypervolume of (validation accuracy, PR) above (0, gamma), and its anytime curve."""

from __future__ import annotations

import numpy as np
import pytest

from automc.kb.states import State
from automc.search._base import Observation
from automc.search.indicators import anytime_best_at_target, anytime_hypervolume, hypervolume


def obs(acc: float | None, pr: float | None, state: str = "COMPLETE") -> Observation:
    return Observation(("s",), state, val_accuracy=acc, pr=pr)


def test_nothing_above_the_target_has_no_volume():
    assert hypervolume(np.empty((0, 2)), 0.4) == 0.0
    assert hypervolume(np.array([[0.95, 0.4], [0.9, 0.1]]), 0.4) == 0.0  # PR must exceed gamma


def test_hypervolume_of_a_known_front():
    pytest.importorskip("pymoo")
    front = np.array([[0.9, 0.5], [0.8, 0.7]])
    assert hypervolume(front, 0.4) == pytest.approx(0.9 * 0.1 + 0.8 * 0.2)  # 0.25
    # dominated points and points below the target add nothing
    more = np.vstack([front, [[0.7, 0.6], [0.99, 0.3]]])
    assert hypervolume(more, 0.4) == pytest.approx(0.25)
    assert hypervolume(front, 0.6) == pytest.approx(0.8 * 0.1)


def test_anytime_curve_follows_the_evaluations():
    pytest.importorskip("pymoo")
    sequence = [obs(0.9, 0.3), obs(None, None, State.FAILED), obs(0.9, 0.5), obs(0.8, 0.7), obs(0.7, 0.6)]
    curve = anytime_hypervolume(sequence, 0.4)
    assert curve == pytest.approx([0.0, 0.0, 0.09, 0.25, 0.25])
    assert anytime_hypervolume([], 0.4) == []


def test_best_accuracy_at_the_target_counts_only_reached_targets():
    obs = [Observation(("a",), "COMPLETE", 0.9, 0.2), Observation(("b",), "COMPLETE", 0.6, 0.4),
           Observation(("c",), State.FAILED), Observation(("d",), "COMPLETE", 0.5, 0.45),
           Observation(("e",), "COMPLETE", 0.7, 0.41)]
    assert anytime_best_at_target(obs, 0.4) == [0.0, 0.6, 0.6, 0.6, 0.7]
