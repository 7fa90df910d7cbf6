"""Soft Filter Pruning (He et al., "Soft Filter Pruning for Accelerating Deep Convolutional Neural
Networks", IJCAI 2018, https://arxiv.org/abs/1808.06866).

Train for ``sfp_epochs_factor × budget`` epochs. Before training, every ``sfp_update_every`` epochs (counted
in optimiser steps, so fractional budgets work) and always after the last step, zero the filters with the
smallest L2 norm in every prunable layer: the same share in each layer (channels ranked by their relative
rank inside the layer), chosen so that removing them takes ``ratio`` of the model's parameters. Zeroed
filters keep training and may grow back. At the end the filters zeroed last are removed physically; their
BN scale and shift are zeroed too, so the removal does not change the network's function.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from automc.compress._common import check_reduction, distillation, resolve_params, task_teacher
from automc.compress.base import Method, Task
from automc.compress.criteria import l2_weight
from automc.compress.metrics import count_params
from automc.compress.surgery import analyse, prune_channels, select_channels
from automc.compress.train import Hooks, finetune, steps_for


def layer_rank_scores(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each score by its relative rank inside its layer ((rank + 1) / n), so a global selection
    removes about the same share of every layer."""
    out = {}
    for n, s in scores.items():
        ranks = torch.empty(s.numel())
        ranks[torch.argsort(s.flatten(), stable=True)] = torch.arange(s.numel(), dtype=torch.float32)
        out[n] = (ranks + 1) / s.numel()
    return out


class SoftFilterPruning(Method):
    name: ClassVar[str] = "SFP"
    max_layer_ratio: ClassVar[float] = 0.95

    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        p = resolve_params(self.name, params)
        teacher = task_teacher(task)  # the scheme's original model; else the input model, as one step distils
        teacher, model = model if teacher is None else teacher, copy.deepcopy(model).to(task.device)
        p0 = count_params(model)
        example = task.data.example_input()
        an = analyse(model, example)
        state: dict[str, dict[str, list[int]]] = {"plan": {}}

        @torch.no_grad()
        def zero_filters(m: nn.Module, *_: Any) -> None:
            plan = select_channels(m, layer_rank_scores(l2_weight(an.layers)), ratio, self.max_layer_ratio,
                                   analysis=an) if ratio > 0 else {}
            for name, idx in plan.items():
                lay = an.layers[name]
                lay.conv.weight[idx] = 0
                if lay.conv.bias is not None:
                    lay.conv.bias[idx] = 0
                if lay.bn is not None:
                    lay.bn.weight[idx] = 0
                    lay.bn.bias[idx] = 0
            state["plan"] = plan

        total = steps_for(task, task.budget.epochs_for(p["sfp_epochs_factor"]))
        every = max(1, round(p["sfp_update_every"] * task.data.steps_per_epoch(task.budget.batch_size)))

        def after_step(m: nn.Module, step: int, n_steps: int) -> None:
            if step % every == 0 or step == n_steps:
                zero_filters(m)

        zero_filters(model)
        finetune(model, task, 0.0, steps=total, hooks=Hooks(after_step=after_step), **distillation(task, teacher))
        model, _ = prune_channels(model, state["plan"], inplace=True, analysis=an)
        check_reduction(self.name, p0, count_params(model), ratio)
        return model
