"""Every proposal of every strategy reaches the target γ, and the PR computed for a scheme is the PR measured after
applying it with the real methods."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from automc.compress.base import Task, TrainBudget
from automc.compress.data import synthetic
from automc.compress.layerwise import PolicySpace
from automc.compress.metrics import count_params
from automc.compress.models import build_model
from automc.compress.scheme import apply_scheme
from automc.search import STRATEGIES
from automc.search._base import Context, History, Observation, round_rng
from automc.search._optimize import _walk
from automc.search._perlayer import policy_of
from automc.search.objective import PR_TOLERANCE, feasible, ranked
from automc.search.space import SearchSpace

GAMMA = 0.4
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace()


def fake(space: SearchSpace, key, r: int) -> Observation:
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    pr = space.pr(key, GAMMA)
    return Observation(key, "COMPLETE", float(0.9 - 0.3 * pr + 0.05 * rng.random()), pr, pr * 0.8, round=r)


@pytest.fixture(scope="module")
def layers() -> PolicySpace:
    """A ResNet-20's prunable layers, for the strategies that search per-layer policies."""
    torch.manual_seed(0)
    return PolicySpace(build_model("resnet20", 10), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_proposal_of_every_strategy_reaches_the_target(name, space, layers):
    cls = STRATEGIES[name]
    options = {"candidates": 60, "fit_steps": 10, "warm_steps": 10} if name == "progressive" else {}
    strategy = cls(Context(space=space, target_pr=GAMMA, seed=1, per_round=6, options=options,
                           task_vector=(0.0,) * 8, layers=layers if cls.per_layer else None))
    history = History(Observation((), "COMPLETE", 0.9, 0.0, 0.0, params=1000.0))
    proposed = 0
    for r in range(3):
        proposals = strategy.propose(history, 6, round_rng(1, r))
        assert proposals
        for key in proposals:
            assert space.feasible(key), space.why_not(key)  # an excluded method (LFB) included
            assert not {space.strategy(s).method for s in key} & space.excluded
            assert space.pr(key, GAMMA) == pytest.approx(GAMMA)
            assert not history.tried(key)
            policy = policy_of(space, key)
            assert (policy is not None) == cls.per_layer  # a per-layer policy, which meets γ as computed
            assert policy is None or layers.meets(policy, GAMMA)
        proposed += len(proposals)
        new = []
        for key in _walk(proposals, history):
            obs = fake(space, key, r)
            if cls.learns_from_screen:  # its proposals are screened at rung 0 first
                history.screened.append(dataclasses.replace(obs, evaluation_id=f"s{len(history.screened)}"))
            history.add(obs)
            new.append(obs)
        strategy.observe(history, new)
    assert proposed >= 12


SCHEMES = ["SFP(target_ratio_factor=1.0)", "LFB", "NS(target_ratio_factor=0.3) > LMA(target_ratio_factor=0.7)",
           "LeGR(target_ratio_factor=0.5) > HOS(target_ratio_factor=0.5)",
           "HOS(target_ratio_factor=0.1) > NS(target_ratio_factor=0.1) > SFP(target_ratio_factor=0.9)"]


@pytest.mark.parametrize("text", SCHEMES)
def test_computed_pr_is_the_measured_pr(text):
    """Applied with the real methods (no training: the shapes are what counts) to a ResNet-20, a scheme that
    closes the target lands on it, every intermediate step where the computed share says."""
    space = SearchSpace(exclude=())  # LFB too: --baseline and compress still apply it
    key = space.parse(text)
    assert space.feasible(key)
    data = synthetic(num_classes=4, per_class=24, size=16, seed=0)
    model = build_model("resnet20", num_classes=4)
    task = Task(data, GAMMA, TrainBudget(epochs=0.0, batch_size=32))
    result = apply_scheme(model, space.to_scheme(key), task)
    p0 = count_params(model)
    for i, step in enumerate(result.steps, 1):
        measured = 1.0 - step.measurement.params / p0
        assert measured == pytest.approx(space.pr(key[:i], GAMMA), abs=PR_TOLERANCE), (i, step.strategy)
    assert feasible(Observation(key, "COMPLETE", 0.5, 1.0 - result.after.params / p0), GAMMA)


def test_the_objective_is_the_best_validation_accuracy_meeting_the_targets():
    obs = [Observation(("a",), "COMPLETE", 0.80, 0.401, 0.30), Observation(("b",), "COMPLETE", 0.85, 0.30, 0.2),
           Observation(("c",), "COMPLETE", 0.79, 0.398, 0.45), Observation(("d",), "FAILED"),
           Observation(("e",), "COMPLETE", 0.82, 0.39, 0.5)]
    assert [o.scheme for o in ranked(obs, GAMMA)] == [("a",), ("c",)]  # b and e miss gamma; c within rounding
    assert [o.scheme for o in ranked(obs, GAMMA, target_fr=0.4)] == [("c",)]
