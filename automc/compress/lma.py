"""LMA: distillation into a narrower student with light multi-segment (piecewise-linear) activations.

Xu et al., "Light Multi-segment Activation for Model Compression", AAAI 2020.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from automc.compress import surgery
from automc.compress._common import check_reduction, frozen_teacher, resolve_params
from automc.compress.base import Method, Task
from automc.compress.criteria import l1_weight
from automc.compress.layers import recalibrate_bn, replacement_layer, set_module, train_inputs
from automc.compress.metrics import count_params
from automc.compress.models import BasicBlock, Bottleneck, CifarResNet
from automc.compress.train import finetune
from automc.errors import CompressionError


def _tables(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted breakpoints, their order, slope per segment, intercept per segment) from the flat vector."""
    b, order = torch.sort(w[:k])
    d = w[k: 2 * k][order]
    s0, c = w[2 * k], w[2 * k + 1]
    zero = torch.zeros(1, dtype=w.dtype, device=w.device)
    slopes = s0 + torch.cat([zero, torch.cumsum(d, 0)])
    intercepts = c - torch.cat([zero, torch.cumsum(d * b, 0)])
    return b, order, slopes, intercepts


def _piecewise_linear(x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    b, _, slopes, intercepts = _tables(w, k)
    seg = torch.bucketize(x.contiguous(), b.to(x.dtype))  # segment index: number of breakpoints below x
    return slopes.to(x.dtype)[seg] * x + intercepts.to(x.dtype)[seg]


def _relu_sum(x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """The same function as c + s0 * x + sum_j d_j * relu(x - b_j) in standard ops only, for ``torch.export``
    and ONNX (no sort, bucketize or custom autograd node). Vectorised over j: a sixth of the ONNX nodes of the
    table lookup and export several times faster, for k copies of x in memory at inference."""
    w = w.to(x.dtype)
    shape = (k,) + (1,) * x.dim()
    terms = w[k: 2 * k].view(shape) * torch.relu(x.unsqueeze(0) - w[:k].view(shape))
    return w[2 * k + 1] + w[2 * k] * x + terms.sum(0)


class _PiecewiseLinear(torch.autograd.Function):
    """The activation as one autograd node: Torch-Pruning sees an element-wise op of x (its dependency
    graph blows up on the small parameter-side tensors otherwise), and only x and w are kept for backward.

    Gradients of w are averaged over the positions of a sample rather than summed (the parameters are
    shared by all C*H*W of them), or plain SGD steps blow the function up.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, w)
        ctx.k = k
        with torch.no_grad():
            return _piecewise_linear(x, w, k)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # noqa: ANN001, ANN205
        x, w = ctx.saved_tensors
        k = ctx.k
        b, order, slopes, _ = _tables(w.detach(), k)
        seg = torch.bucketize(x.contiguous(), b.to(x.dtype))
        gx = gy * slopes.to(gy.dtype)[seg]
        flat = seg.flatten()
        g_s = torch.zeros(k + 1, dtype=torch.float64, device=x.device).index_add_(
            0, flat, (gy * x).flatten().to(torch.float64))
        g_i = torch.zeros(k + 1, dtype=torch.float64, device=x.device).index_add_(
            0, flat, gy.flatten().to(torch.float64))
        above_s = g_s.flip(0).cumsum(0).flip(0)[1:]  # sum over segments i > j, for sorted breakpoint j
        above_i = g_i.flip(0).cumsum(0).flip(0)[1:]
        d_sorted = w.detach()[k: 2 * k][order].to(torch.float64)
        gw = torch.zeros(2 * k + 2, dtype=torch.float64, device=x.device)
        gw[:k][order] = -d_sorted * above_i
        gw[k: 2 * k][order] = above_s - b.to(torch.float64) * above_i
        gw[2 * k], gw[2 * k + 1] = g_s.sum(), g_i.sum()
        scale = 1.0 / max(1, x[0].numel()) if x.dim() > 1 else 1.0 / max(1, x.numel())
        return gx, (gw * scale).to(w.dtype), None


class _Parameters(nn.PReLU):
    """The flat parameter vector of a ``MultiSegmentActivation``; its ``forward`` is never called.

    A PReLU only in type: Torch-Pruning counts parameters of known layer types as "wrapped" and leaves them
    alone, whereas it slices free-standing parameters as if they had a channel dimension (these have none).
    """

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__(num_parameters=values.numel())
        with torch.no_grad():
            self.weight.copy_(values)


@replacement_layer
class MultiSegmentActivation(nn.Module):
    """Continuous piecewise-linear activation with ``segments`` pieces, shared by a layer's channels.

    f(x) = c + s0 * x + sum_j d_j * relu(x - b_j) over ``segments - 1`` learnable breakpoints b_j with slope
    changes d_j; initialised to ReLU (s0 = c = 0, one breakpoint at 0 with d = 1, the others spread over
    [-bound, bound] with d = 0). Evaluated as one table lookup (slope, intercept of x's segment), so memory
    does not grow with the number of segments. Gradients of the shared parameters are averaged over the
    positions of a sample rather than summed. The 2 * segments parameters live in one vector
    ``params.weight`` = [b_1..b_k, d_1..d_k, s0, c].
    """

    def __init__(self, segments: int = 8, bound: float = 2.0) -> None:
        super().__init__()
        if segments < 2:
            raise ValueError(f"a multi-segment activation needs at least 2 segments, got {segments}")
        k = segments - 1
        b = torch.linspace(-bound, bound, k) if k > 1 else torch.zeros(1)
        zero = int(b.abs().argmin())
        b[zero] = 0.0
        d = torch.zeros(k)
        d[zero] = 1.0
        self.k = k
        self.params = _Parameters(torch.cat([b, d, torch.zeros(2)]))

    @property
    def breakpoints(self) -> torch.Tensor:
        return self.params.weight[: self.k]

    @property
    def deltas(self) -> torch.Tensor:
        return self.params.weight[self.k: 2 * self.k]

    @property
    def slope0(self) -> torch.Tensor:
        return self.params.weight[2 * self.k]

    @property
    def offset(self) -> torch.Tensor:
        return self.params.weight[2 * self.k + 1]

    @property
    def segments(self) -> int:
        return self.k + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return _piecewise_linear(x, self.params.weight, self.k)
        if torch.compiler.is_exporting():
            return _relu_sum(x, self.params.weight, self.k)
        return _PiecewiseLinear.apply(x, self.params.weight, self.k)

    kind = "multi_segment_activation"

    def spec(self) -> dict[str, Any]:
        """JSON-able description (``layers.lowrank_specs`` / ``apply_specs`` carry it through saving)."""
        return {"type": self.kind, "segments": self.segments}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MultiSegmentActivation:
        return cls(int(spec["segments"]))

    @classmethod
    def prepare(cls, model: nn.Module) -> None:
        """Open the activation slots of built-in blocks that call ``F.relu`` (before specs are applied)."""
        _open_slots(model)

    def extra_repr(self) -> str:
        return f"segments={self.segments}"


# -- putting the activations into a model ---------------------------------------------------------------------

class _LMABasicBlock(BasicBlock):
    """``models.BasicBlock`` with its two ReLUs as modules ``act1``, ``act2``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class _LMABottleneck(Bottleneck):
    """``models.Bottleneck`` with its three ReLUs as modules ``act1``..``act3``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


class _LMACifarResNet(CifarResNet):
    """``models.CifarResNet`` with its stem ReLU as the module ``act``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# Built-in modules that call F.relu: their LMA twin and the activation slots it adds.
_FUNCTIONAL_RELU: dict[type[nn.Module], tuple[type[nn.Module], tuple[str, ...]]] = {
    BasicBlock: (_LMABasicBlock, ("act1", "act2")),
    Bottleneck: (_LMABottleneck, ("act1", "act2", "act3")),
    CifarResNet: (_LMACifarResNet, ("act",)),
}


def _open_slots(model: nn.Module) -> list[str]:
    """Give built-in blocks that apply ``F.relu`` activation slots (in place; an ``nn.ReLU`` each, so the
    function is unchanged); returns every activation path: new slots and the model's ``nn.ReLU`` modules."""
    for _, m in list(model.named_modules()):
        if type(m) in _FUNCTIONAL_RELU:
            twin, slots = _FUNCTIONAL_RELU[type(m)]
            for slot in slots:
                m.add_module(slot, nn.ReLU())
            m.__class__ = twin
    return [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


def install_activations(model: nn.Module, segments: int) -> list[str]:
    """Replace every ReLU of ``model`` (in place) by a ReLU-initialised ``MultiSegmentActivation``; returns
    the activation paths. Modules of unknown types that call ``F.relu`` inside ``forward`` keep it."""
    paths = _open_slots(model)
    for path in paths:
        set_module(model, path, MultiSegmentActivation(segments))
    return paths


def activation_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Module path -> spec of every multi-segment activation of ``model``."""
    return {n: m.spec() for n, m in model.named_modules() if isinstance(m, MultiSegmentActivation)}


def take_out_activations(model: nn.Module) -> dict[str, MultiSegmentActivation]:
    """Swap every multi-segment activation for a parameter-free ReLU (in place); returns them by path.

    HOS and LMA prune with the activations taken out (then ``put_back_activations``), so the dependency graph
    is the plain one. (Other methods need not: the activation is one autograd node and its parameters sit in
    a PReLU-typed holder, so Torch-Pruning neither slices them nor loses its way in their small tensors.)
    """
    taken = {n: m for n, m in model.named_modules() if isinstance(m, MultiSegmentActivation)}
    for path in taken:
        set_module(model, path, nn.ReLU())
    return taken


def put_back_activations(model: nn.Module, taken: Mapping[str, nn.Module]) -> nn.Module:
    """Undo ``take_out_activations`` on ``model`` (or on a pruned copy of it)."""
    device = next(model.parameters()).device
    for path, m in taken.items():
        set_module(model, path, m.to(device))
    return model


def uniform_scores(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Channel scores that shrink every prunable layer by about the same share: each filter's L1-norm rank
    percentile inside its layer."""
    scores = l1_weight(surgery.prunable_layers(model, example))
    out = {}
    for name, s in scores.items():
        ranks = torch.empty_like(s)
        ranks[torch.argsort(s, stable=True)] = torch.arange(len(s), dtype=s.dtype)
        out[name] = (ranks + 1) / len(s)
    return out


# -- the method -----------------------------------------------------------------------------------------------

MAX_LAYER_PRUNE_RATIO = 0.9  # LMA has no such hyperparameter in the catalogue


class LMA(Method):
    """Distil the input model into a narrower copy of itself with multi-segment activations.

    Student: a copy of the input model whose block-internal channels are all narrowed by about the same
    share (L1-norm rank percentile per layer, through ``surgery.prune_by_scores``, at most 90% of a layer), so
    that with its activations it has ``(1 - ratio)`` of the input's parameters; it keeps the surviving
    weights as initialisation. Every ReLU becomes a ``MultiSegmentActivation`` with ``lma_segments``
    segments (ReLU at the start). Trained for ``finetune_epochs_factor`` x the budget on
    ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL`` against the teacher (``Task.teacher``, else the input model) at
    temperature ``kd_temperature``.
    """

    name: ClassVar[str] = "LMA"

    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        p = resolve_params(self.name, params)
        p0 = count_params(model)
        example = task.data.example_input(1).to(task.device)
        student = copy.deepcopy(model).to(task.device)
        segments = int(p["lma_segments"])
        taken = take_out_activations(student)  # an LMA model again: keep its learned activations
        bare = count_params(student)
        probe = put_back_activations(copy.deepcopy(student), copy.deepcopy(taken))
        install_activations(probe, segments)
        activation_params = count_params(probe) - bare
        share = 1 - ((1 - ratio) * p0 - activation_params) / bare  # of the activation-free student
        if share > 0:
            try:
                student, _ = surgery.prune_by_scores(student, uniform_scores(student, example), share,
                                                     MAX_LAYER_PRUNE_RATIO, example)
            except CompressionError as e:
                raise CompressionError(f"LMA builds its student by narrowing block-internal channels: {e}") from e
        put_back_activations(student, taken)
        install_activations(student, segments)
        student.to(task.device)  # the new activations are created on the CPU
        check_reduction(self.name, p0, count_params(student), ratio)
        recalibrate_bn(student, train_inputs(task))
        teacher = frozen_teacher(task, model)
        finetune(student, task, task.budget.epochs_for(p["finetune_epochs_factor"]), teacher=teacher,
                 kd_temperature=float(p["kd_temperature"]), kd_alpha=float(p["kd_alpha"]))
        return student
