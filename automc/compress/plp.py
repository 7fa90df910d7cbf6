"""PLP: per-layer pruning by a policy (the step AMC and SeerNet policies become; He et al., AMC, ECCV 2018; Wang et
al., SeerNet, IJCV 2023; with ``layer_keep=uniform``, uniform magnitude pruning as in Li et al., Pruning Filters for
Efficient ConvNets, ICLR 2017).

1. Each prunable layer keeps ``kept(k_i, channels)`` output channels, the highest-scored by ``filter_criterion``
   (``compress.layerwise``). ``layer_keep`` is the policy (``0.5:0.25:...``, one ratio per layer, found for this
   model by a per-layer search) or ``uniform`` (one ratio for every layer, the largest that removes ``ratio``).
2. Re-estimate the BN statistics on a few training batches, then fine-tune for ``finetune_epochs_factor × budget``
   epochs, distilling from ``Task.teacher`` (else the input model). At 0 epochs neither: the pruned model as it is
   (a rung-0 screening re-estimates BatchNorm itself).

A learned policy removes what it says: it must reach ``ratio`` (within the 3 pp every method is held to) and may go
beyond it (AMC's clipping meets the target from below, an agent may prune more), the PR it reaches being exact.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from automc.catalog.policy import UNIFORM, parse_policy
from automc.compress._common import distillation, resolve_params, task_distillation, task_teacher
from automc.compress.base import Method, Task
from automc.compress.layers import recalibrate_bn, train_inputs
from automc.compress.layerwise import PolicySpace, apply_policy
from automc.compress.metrics import count_params
from automc.compress.train import finetune
from automc.errors import CompressionError

TOLERANCE = 0.03


class LayerwisePruning(Method):
    name: ClassVar[str] = "PLP"

    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        p = resolve_params(self.name, params)
        teacher = task_teacher(task)
        teacher, model = model if teacher is None else teacher, copy.deepcopy(model).to(task.device)
        epochs = task.budget.epochs_for(p["finetune_epochs_factor"])
        if ratio <= 0:
            finetune(model, task, epochs, **task_distillation(task))
            return model
        example = task.data.example_input()
        space = PolicySpace(model, example)
        uniform = p["layer_keep"] == UNIFORM
        policy = space.uniform(ratio) if uniform else space.check(parse_policy(str(p["layer_keep"])))
        got = space.pr(policy)
        if got < ratio - TOLERANCE or (uniform and got > ratio + TOLERANCE):
            raise CompressionError(f"PLP's {'uniform ' if uniform else ''}policy removes {got:.1%} of the parameters "
                                   f"instead of {ratio:.1%} (tolerance ±{TOLERANCE:.0%})")
        model, _ = apply_policy(model, policy, str(p["filter_criterion"]), example)
        if count_params(model) != space.params_of(policy):  # the search trusts the computed count: never let it drift
            raise RuntimeError(f"PLP built {count_params(model):,} parameters, computed {space.params_of(policy):,}")
        model.to(task.device)
        if epochs > 0:  # without a fine-tune the caller re-estimates BatchNorm if it wants (rung 0 does)
            recalibrate_bn(model, train_inputs(task))
            finetune(model, task, epochs, **distillation(task, teacher))
        return model
