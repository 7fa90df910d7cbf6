"""The final fine-tune's fixed budget: one total for every scheme (its steps' shares, then a distillation polish from
the base model), and the two ways to get a final model (re-apply the scheme, or polish the searched model)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from automc.compress.base import Task, TrainBudget
from automc.compress.budget import final_split
from automc.compress.train import steps_for
from automc.errors import ValidationError
from automc.search.evaluator import Evaluator
from tests.search.test_evaluator import forwards_of

torch.set_num_threads(1)

# two schemes of very different epoch factors: 0.4 in all, and 1.5 + 0.8 = 2.3
LIGHT = "SFP(target_ratio_factor=1.0, sfp_epochs_factor=0.4)"
HEAVY = "NS(target_ratio_factor=0.5, finetune_epochs_factor=1.5) > SFP(target_ratio_factor=0.5, sfp_epochs_factor=0.8)"


def final_task(task, epochs):
    return Task(task.data, task.target_pr, TrainBudget(epochs=epochs, batch_size=32, lr=0.05), task.device, seed=0)


def optimiser_steps(run):
    """Optimiser steps taken by any torch optimiser during ``run()`` (torch's global step hook), and its result."""
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        out = run()
    finally:
        handle.remove()
    return len(steps), out



def test_split_gives_each_step_its_share_of_the_cap_and_the_rest_to_the_polish():
    s = final_split([0.8, 1.5], 10.0, 4.0)
    assert s.steps == pytest.approx((2.0, 3.75)) and s.polish == pytest.approx(4.25) and s.step_scale == 2.5
    for factors in ([], [0.4], [0.8, 1.5], [1.5, 1.5, 1.0], [3.0, 3.0]):  # the last is over the cap: scaled down
        for mode in ("reapply", "polish"):
            s = final_split(factors, 7.0, 4.0, mode)
            assert math.isclose(sum(s.steps) + s.polish, 7.0) and s.polish >= 0 and len(s.steps) == len(factors)
    assert final_split([0.8], 7.0, 4.0, "polish").polish == 7.0
    assert final_split([3.0, 3.0], 6.0, 4.0).polish == 0.0
    for bad in ({"mode": "again"}, {"total": -1.0}, {"total": math.inf}):
        with pytest.raises(ValidationError):
            final_split([0.4], **{"total": 2.0, "cap": 4.0, **bad})


def test_the_final_budget_is_the_same_for_two_different_schemes(base, task, space, tmp_path):
    epochs = 8.0
    ft = final_task(task, epochs)
    want = steps_for(ft, epochs)
    for text in (LIGHT, HEAVY):
        key = space.parse(text)
        ev = Evaluator(base, task, cache_dir=tmp_path / f"c{len(key)}", space=space)
        n, (result, _) = optimiser_steps(lambda ev=ev, key=key: ev.final(key, ft))
        split = ev.final_split(key, epochs)
        phases = sum(2 if s.startswith("NS(") else 1 for s in key) + (split.polish > 0)  # NS trains in two phases
        # every phase rounds its fractional epochs to whole optimiser steps: at most half a step each way
        assert result.ok and abs(n - want) <= phases / 2 + 0.5, (text, n, want)
        assert result.epochs == epochs and result.compute == epochs and result.record()["compute"] == epochs


def test_polish_mode_starts_from_the_cached_search_model(base, task, space, tmp_path):
    key = space.parse(HEAVY)
    ev = Evaluator(base, task, cache_dir=tmp_path / "cache", space=space)
    assert ev.evaluate(key).ok
    searched = [p.detach().clone() for p in ev.model(key).parameters()]
    first = []

    def pre(opt, args, kwargs):
        if not first:  # the weights the polish starts from (its first step has not changed them yet)
            first.append([p.detach().clone() for g in opt.param_groups for p in g["params"]])

    epochs = 2.0
    ft = final_task(task, epochs)
    handle = register_optimizer_step_pre_hook(pre)
    try:
        n, (result, model) = optimiser_steps(lambda: ev.final(key, ft, mode="polish"))
    finally:
        handle.remove()
    assert result.ok and n == steps_for(ft, epochs)  # no step re-applied: the polish takes the whole budget
    assert len(first[0]) == len(searched) and all(torch.equal(a, b) for a, b in zip(first[0], searched, strict=True))
    assert not all(torch.equal(a, b.detach()) for a, b in zip(searched, model.parameters(), strict=True))
    # nothing to polish: the final model is the searched model itself
    _, same = ev.final(key, final_task(task, 0.0), mode="polish")
    assert all(torch.equal(a, b.detach()) for a, b in zip(searched, same.parameters(), strict=True))


@pytest.mark.parametrize("mode", ["reapply", "polish"])
def test_the_final_polish_distils_from_the_base_model(base, task, space, tmp_path, mode):
    key = space.parse(LIGHT)
    ev = Evaluator(base, task, cache_dir=tmp_path / "cache", space=space)
    assert ev.evaluate(key).ok
    ev.base_measurement(final_task(task, 1.0))  # the base model's own measurement is not a teacher's forward
    epochs = 4.0
    ft = final_task(task, epochs)
    split = ev.final_split(key, epochs, mode)
    n, (result, _) = forwards_of(base, lambda: ev.final(key, ft, mode=mode))
    # one teacher forward per optimiser step: SFP's share (re-applied only) and the polish
    want = steps_for(ft, split.polish) + (steps_for(ft, split.steps[0]) if mode == "reapply" else 0)
    assert result.ok and ft.teacher is None and split.polish > 0 and n == want
