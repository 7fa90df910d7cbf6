"""Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
ICCV 2017, https://arxiv.org/abs/1708.06519).

1. Sparsity training: the first half of ``finetune_epochs_factor × budget`` epochs, with an L1 penalty
   ``sparsity · Σ|γ|`` on the scaling factors of the block-internal BNs (through ``Hooks.regularize``).
2. Remove the channels with the smallest |γ| globally until ``ratio`` of the parameters are gone, never more
   than ``max_layer_prune_ratio`` of one layer (``surgery.prune_by_scores``).
3. Re-estimate the BN statistics on a few training batches, then fine-tune for the second half of the budget
   (distilling from ``Task.teacher``, else the input model, ``TrainBudget.distill_alpha``).

With a ``Task.teacher`` (a later step of a scheme) the sparsity training distils from it too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from automc.compress._common import check_reduction, distillation, resolve_params, task_distillation, task_teacher
from automc.compress.base import Method, Task
from automc.compress.criteria import l2_bn
from automc.compress.layers import recalibrate_bn, train_inputs
from automc.compress.metrics import count_params
from automc.compress.surgery import prunable_layers, prune_by_scores
from automc.compress.train import Hooks, finetune


class NetworkSlimming(Method):
    name: ClassVar[str] = "NS"
    sparsity: ClassVar[float] = 1e-4  # λ of the paper's CIFAR experiments
    sparsity_share: ClassVar[float] = 0.5  # share of the fine-tune budget spent on sparsity training

    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        p = resolve_params(self.name, params)
        teacher = task_teacher(task)
        teacher, model = model if teacher is None else teacher, copy.deepcopy(model).to(task.device)
        p0 = count_params(model)
        epochs = task.budget.epochs_for(p["finetune_epochs_factor"])
        example = task.data.example_input()
        if ratio <= 0:
            finetune(model, task, epochs, **task_distillation(task))
            return model
        bns = [lay.bn for lay in prunable_layers(model, example).values() if lay.bn is not None]

        def l1_on_gammas(_: nn.Module) -> torch.Tensor:
            return self.sparsity * sum(bn.weight.abs().sum() for bn in bns)

        # without a task teacher the sparsity phase is label-only as in the paper: its input is the student itself
        finetune(model, task, epochs * self.sparsity_share, hooks=Hooks(regularize=l1_on_gammas),
                 **task_distillation(task))
        layers = prunable_layers(model, example)
        model, _ = prune_by_scores(model, l2_bn(layers), ratio, p["max_layer_prune_ratio"], example)
        recalibrate_bn(model, train_inputs(task))
        finetune(model, task, epochs * (1 - self.sparsity_share), **distillation(task, teacher))
        check_reduction(self.name, p0, count_params(model), ratio)
        return model
