"""LFB: low-rank approximation of convs with a learned filter basis.

Li et al., "Learning Filter Basis for Convolutional Neural Network Compression", ICCV 2019.

Every plain k x k conv (C_in -> C_out) becomes a basis conv (C_in -> m, k x k) and a 1x1 combination conv
(m -> C_out), initialised from a truncated SVD of the kernel reshaped to (C_out, C_in*k*k), so the start
point is the best rank-m approximation of the original layer. Every layer keeps the same share of its full
rank min(C_out, C_in*k*k), chosen so that the whole model loses ``ratio`` of its parameters; layers where a
factorisation would not save parameters stay as they are. Convs that are already factorised (Tucker-2 or
filter-basis layers of an earlier step), grouped or 1x1 convs are left alone.

Then the basis and the combinations are learned by fine-tuning (``finetune_epochs_factor`` x the budget)
with the loss ``CE(labels) + aux_loss_factor * aux`` where ``aux`` compares the student with the teacher
(``Task.teacher``, else the input model) on the same batch; this auxiliary loss is LFB's distillation:

- ``aux_loss="CE"``: soft-target cross-entropy, -sum softmax(teacher) * log softmax(student);
- ``aux_loss="NLL"``: negative log-likelihood of the teacher's predicted class (hard pseudo-labels).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from automc.compress import lowrank
from automc.compress._common import check_reduction, frozen_teacher, resolve_params
from automc.compress.base import Method, Task
from automc.compress.compute import charge
from automc.compress.layers import recalibrate_bn, train_inputs
from automc.compress.metrics import count_params
from automc.compress.train import Hooks, finetune
from automc.errors import CompressionError

AUX_LOSSES = ("NLL", "CE")


def aux_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The auxiliary term of LFB fine-tuning (see the module docstring)."""
    log_p = F.log_softmax(student_logits.float(), 1)
    if kind == "CE":
        return -(F.softmax(teacher_logits.float(), 1) * log_p).sum(1).mean()
    if kind == "NLL":
        return F.nll_loss(log_p, teacher_logits.argmax(1))
    raise ValueError(f"unknown aux_loss {kind!r}; expected one of {AUX_LOSSES}")


def factorize(model: nn.Module, ratio: float) -> tuple[nn.Module, dict[str, int]]:
    """Replace the plain convs of ``model`` (in place) by filter-basis layers so that ``ratio`` of its
    parameters are removed; returns (model, layer name -> basis size). ``CompressionError`` if out of reach."""
    p0 = count_params(model)
    n_remove = round(ratio * p0)
    if n_remove <= 0:
        return model, {}
    convs = lowrank.decomposable_convs(model)
    ranks, removed = lowrank.plan_ranks(convs, n_remove, lowrank.filter_basis_rank_at,
                                        lowrank.filter_basis_params)
    if removed < n_remove - 0.03 * p0:
        raise CompressionError(
            f"LFB can remove at most {removed / p0:.1%} of the parameters (requested {ratio:.1%}): only "
            f"{len(convs)} plain k x k convs are left to factorise (already factorised, grouped, 1x1 and "
            f"linear layers are not touched)")
    return lowrank.replace_convs(model, ranks, lowrank.FilterBasisConv.from_conv), ranks


class LFB(Method):
    """Filter-basis low-rank approximation, then fine-tuning with an auxiliary teacher loss."""

    name: ClassVar[str] = "LFB"

    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        p = resolve_params(self.name, params)
        kind, factor = str(p["aux_loss"]), float(p["aux_loss_factor"])
        p0 = count_params(model)
        student, _ = factorize(copy.deepcopy(model).to(task.device), ratio)
        check_reduction(self.name, p0, count_params(student), ratio)
        recalibrate_bn(student, train_inputs(task))
        teacher = frozen_teacher(task, model)

        def extra_loss(_model: nn.Module, x: torch.Tensor, _y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t = teacher(x)
            charge(x.shape[0], backward=False)  # the teacher's forward (finetune charges the student's)
            return factor * aux_loss(kind, logits, t)

        hooks = Hooks(extra_loss=extra_loss if factor > 0 else None)
        finetune(student, task, task.budget.epochs_for(p["finetune_epochs_factor"]), hooks=hooks)
        return student
