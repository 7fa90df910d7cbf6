"""Distillation from the original model: with ``Task.teacher`` set, every fine-tune of every method distils from it
(HOS's plain phase and NS's sparsity phase included; LeGR's candidate fine-tunes excepted), never from the step's
input, and ``apply_scheme`` makes the scheme's input model every step's teacher."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from automc.catalog import load_catalog
from automc.compress._common import resolve_params
from automc.compress.metrics import count_params
from automc.compress.scheme import apply_scheme, apply_step
from automc.compress.train import steps_for

# the second step of each method, at its cheapest fine-tune factors
SECOND = {
    "NS": "NS(target_ratio_factor=1.0, finetune_epochs_factor=0.4, max_layer_prune_ratio=0.9)",
    "SFP": "SFP(target_ratio_factor=1.0, sfp_epochs_factor=0.2)",
    "LeGR": "LeGR(target_ratio_factor=1.0, finetune_epochs_factor=0.2, ea_epochs_factor=0.4, "
            "max_layer_prune_ratio=0.9)",
    "HOS": "HOS(target_ratio_factor=1.0, finetune_epochs_factor=0.4, kd_finetune_epochs_factor=0.2, aux_mse_factor=1)",
    "LFB": "LFB(target_ratio_factor=1.0, finetune_epochs_factor=0.2, aux_loss_factor=1)",
    "LMA": "LMA(target_ratio_factor=1.0, finetune_epochs_factor=0.2)",
}
FIRST = "NS(target_ratio_factor=0.5, finetune_epochs_factor=0.2, max_layer_prune_ratio=0.9)"


def distilling_steps(method: str, params: dict, task) -> int:
    """Optimiser steps of the fine-tunes that must distil from the teacher (one teacher forward each)."""
    p = resolve_params(method, params)
    ep = task.budget.epochs_for
    if method == "NS":  # sparsity phase and final fine-tune
        e = ep(p["finetune_epochs_factor"])
        return steps_for(task, e * 0.5) + steps_for(task, e * 0.5)
    if method == "SFP":
        return steps_for(task, ep(p["sfp_epochs_factor"]))
    if method == "HOS":  # the KD phase and the plain phase
        return steps_for(task, ep(p["kd_finetune_epochs_factor"])) + steps_for(task, ep(p["finetune_epochs_factor"]))
    return steps_for(task, ep(p["finetune_epochs_factor"]))  # LeGR's final fine-tune (not its candidates), LFB, LMA


def forwards(*models: torch.nn.Module) -> tuple[list[torch.nn.Module], list]:
    """Forward hooks on ``models`` that record which module object ran (copies made later carry the hook too)."""
    calls: list[torch.nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: calls.append(mod)) for m in models]
    return calls, handles


@pytest.fixture(scope="module")
def original(syn_model):
    return copy.deepcopy(syn_model)


@pytest.fixture(scope="module")
def parent(original, syn_data):
    """The model after a first step (NS, half of gamma = 0.4) of the scheme ``FIRST > method``."""
    from automc.compress.base import Task, TrainBudget

    task = Task(syn_data, 0.4, TrainBudget(epochs=2, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    model, _ = apply_step(original, load_catalog().parse_scheme(FIRST).strategies[0], task,
                          params_original=count_params(original), seed=0)
    return model


@pytest.mark.parametrize("method", sorted(SECOND))
def test_every_fine_tune_distils_from_the_task_teacher(method, original, parent, syn_task):
    strategy = load_catalog().parse_scheme(SECOND[method]).strategies[0]
    task = dataclasses.replace(syn_task, teacher=original)
    calls, handles = forwards(original, parent)
    try:
        child, _ = apply_step(parent, strategy, task, params_original=count_params(original), seed=1)
    finally:
        for h in handles:
            h.remove()
    as_teacher = [m for m in calls if m is original]
    # one teacher forward per step of every fine-tune that distils: the original model itself, in eval mode
    assert len(as_teacher) == distilling_steps(method, strategy.params, task) > 0
    assert not any(m.training for m in as_teacher) and not original.training
    # the step's input never teaches: neither itself nor a frozen copy of it (what LMA, LFB and HOS made before)
    assert not [m for m in calls if m is parent or (m is not original and not any(p.requires_grad for p in
                                                                                 m.parameters()))]
    assert count_params(child) < count_params(parent)


def test_a_scheme_distils_every_step_from_its_input_model(original, syn_task):
    scheme = load_catalog().parse_scheme(f"{FIRST} > {SECOND['HOS']}")
    phase = {"step": 0}

    def progress(line: str) -> None:  # "step i/n: ..." starts step i, "step i/n done: ..." ends it
        head = line.split(":")[0]
        phase["step"] = 0 if head.endswith("done") else int(head.split()[1].split("/")[0])

    calls: list[tuple[int, bool]] = []
    handle = original.register_forward_hook(lambda mod, _i, _o: calls.append((phase["step"], mod is original)))
    try:
        result = apply_scheme(original, scheme, syn_task, progress=progress)
    finally:
        handle.remove()
    assert len(result.steps) == 2 and syn_task.teacher is None  # the caller's task is left as it was
    in_step2 = sum(1 for step, is_original in calls if step == 2 and is_original)
    # HOS in step 2 distils from the scheme's input (KD phase and plain phase), not from step 1's output
    assert in_step2 == distilling_steps("HOS", scheme.strategies[1].params, syn_task) > 0


def test_a_one_step_scheme_fine_tunes_as_before(original, syn_task):
    # one step: no task teacher, so HOS's plain phase stays label-only, exactly as ``apply_step`` without a teacher
    scheme = load_catalog().parse_scheme(SECOND["HOS"])
    result = apply_scheme(original, scheme, syn_task)
    alone, _ = apply_step(original, scheme.strategies[0], syn_task, params_original=count_params(original))
    x = syn_task.data.example_input(8)
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), alone.eval()(x))
