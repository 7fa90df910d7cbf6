
"""The method contract, run for every registered method: smaller by the asked ratio (±3 pp), input model
untouched, still a working classifier; plus a few method-specific checks."""

import copy
import dataclasses

import pytest
import torch

from automc.compress import METHODS
from automc.compress.metrics import count_params
from automc.compress.ns import NetworkSlimming
from automc.compress.sfp import SoftFilterPruning, layer_rank_scores
from automc.compress.train import evaluate
from automc.errors import NotFoundError, ValidationError

MINE = {"NS": {"max_layer_prune_ratio": 0.9, "finetune_epochs_factor": 1.0},
        "SFP": {"sfp_epochs_factor": 1.0, "sfp_update_every": 1},
        "LeGR": {"max_layer_prune_ratio": 0.9, "finetune_epochs_factor": 1.0, "ea_epochs_factor": 0.5},
        "PLP": {"layer_keep": "uniform", "filter_criterion": "l1_weight", "finetune_epochs_factor": 1.0}}


def test_registry_matches_catalogue_names():
    from automc.catalog import load_catalog

    assert set(METHODS) == set(load_catalog().methods)
    assert all(cls.name == name for name, cls in METHODS.items())


@pytest.mark.parametrize("ratio", [0.3, 0.6])
@pytest.mark.parametrize("method", sorted(MINE))
def test_contract(method, ratio, syn_model, syn_task):
    before = copy.deepcopy(syn_model.state_dict())
    out = METHODS[method]().compress(syn_model, syn_task, MINE[method], ratio)
    pr = 1 - count_params(out) / count_params(syn_model)
    assert abs(pr - ratio) <= 0.03
    assert all(torch.equal(v, before[k]) for k, v in syn_model.state_dict().items())
    assert out(syn_task.data.example_input(3)).shape == (3, 4)


@pytest.mark.parametrize("method", sorted(MINE))
def test_stays_learnable(method, syn_model, syn_task):
    # 4 epochs: at 2, a method gets ~6 optimiser steps after pruning on this tiny task, too few to judge
    task = dataclasses.replace(syn_task, budget=dataclasses.replace(syn_task.budget, epochs=4))
    out = METHODS[method]().compress(syn_model, task, MINE[method], 0.4)
    assert evaluate(out, task.data).top1 > 0.6  # 4 classes: chance is 0.25


def test_bad_params_raise(syn_model, syn_task):
    with pytest.raises(ValidationError, match="outside the domain"):
        NetworkSlimming().compress(syn_model, syn_task, {"max_layer_prune_ratio": 1.5}, 0.3)
    with pytest.raises(ValidationError, match="no hyperparameter"):
        SoftFilterPruning().compress(syn_model, syn_task, {"kd_alpha": 0.5}, 0.3)
    with pytest.raises(NotFoundError):
        from automc.compress._common import resolve_params

        resolve_params("XYZ", {})


def test_sfp_zeroes_the_same_share_of_every_layer():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 4.0]), "b": torch.tensor([0.5, 0.1])}
    ranks = layer_rank_scores(scores)
    assert ranks["a"].tolist() == [0.75, 0.25, 0.5, 1.0] and ranks["b"].tolist() == [1.0, 0.5]


def test_legr_search_finds_a_candidate(syn_model, syn_task):
    from automc.compress.legr import LearnedGlobalRanking

    legr = LearnedGlobalRanking()
    legr.compress(syn_model, syn_task, MINE["LeGR"], 0.4)
    assert 0.0 <= legr.best_.fitness <= 1.0 and len(legr.best_.alpha) == 3
