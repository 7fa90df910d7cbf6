"""HOS: filter pruning ranked by higher-order statistics of filter responses, then HOOI (Tucker-2) kernels.

Chatzikonstantinou et al., "Neural Network Compression Using Higher-Order Statistics and Auxiliary
Reconstruction Losses", CVPRW 2020.

Statistics (``hos_local_basis``), per output channel of a prunable conv, over the responses after the
BatchNorm that follows it (the conv output where none does), on a few training batches:

- ``l1norm``: E|x| (first-order baseline);
- ``k34``: |k3|^(1/3) + |k4|^(1/4), the 3rd and 4th cumulants brought back to the units of x;
- ``skew_kur``: |skewness| + |excess kurtosis| (scale-free standardised cumulants).

A near-Gaussian, low-magnitude response carries little information; high scores are kept.

Across layers (``hos_global_basis``): ``P1`` compares raw scores; ``P2`` divides each layer's scores by
their layer mean; ``P3`` uses each filter's rank percentile inside its layer (close to uniform per-layer
pruning). The lowest global scores are removed by ``surgery.prune_by_scores``.

The method (``HOS.compress``): (1) prune ``PRUNE_SHARE`` (half) of the step's parameter reduction by those
scores (block-internal channels only, at most ``MAX_LAYER_PRUNE_RATIO`` of a layer; the share is halved
until the surgery can reach it, and is 0 on a model with no prunable layer); (2) replace the plain k x k
convs by Tucker-2 layers (``lowrank.Tucker2Conv``: 1x1 -> r_in x r_out k x k core -> 1x1, HOOI) with one
common rank share chosen so the total reduction hits the target; (3) fine-tune for
``kd_finetune_epochs_factor`` x budget with distillation from the teacher (``Task.teacher``, else the input
model; T = 4, alpha = 0.5) plus ``aux_mse_factor`` x the MSE between student and teacher stage outputs
(``FeatureMSE``); (4) plain fine-tune for ``finetune_epochs_factor`` x budget, which distils from ``Task.teacher``
too when the task has one (``TrainBudget.distill_alpha``, as the other methods).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from automc.compress import lowrank, surgery
from automc.compress._common import check_reduction, frozen_teacher, resolve_params, task_distillation
from automc.compress.base import Method, Task
from automc.compress.compute import charge
from automc.compress.layers import recalibrate_bn, train_inputs
from automc.compress.lma import put_back_activations, take_out_activations
from automc.compress.metrics import count_params
from automc.compress.train import Hooks, finetune
from automc.errors import CompressionError

LOCAL_BASES = ("l1norm", "k34", "skew_kur")
GLOBAL_BASES = ("P1", "P2", "P3")


class Moments:
    """Running per-channel raw moments E[x], E[x^2], E[x^3], E[x^4], E|x| of (N, C, H, W) responses."""

    def __init__(self, channels: int) -> None:
        self.sums = torch.zeros(5, channels, dtype=torch.float64)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
        powers = torch.stack([x.sum(1), (x**2).sum(1), (x**3).sum(1), (x**4).sum(1), x.abs().sum(1)])
        if self.sums.device != powers.device:
            self.sums = self.sums.to(powers.device)  # summed where the responses are: no transfer per batch
        self.sums += powers
        self.count += x.shape[1]

    def central(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, variance, 3rd central moment, 4th central moment, E|x|)."""
        e1, e2, e3, e4, ea = self.sums.cpu() / max(self.count, 1)
        m2 = (e2 - e1**2).clamp_min(0)
        m3 = e3 - 3 * e1 * e2 + 2 * e1**3
        m4 = e4 - 4 * e1 * e3 + 6 * e1**2 * e2 - 3 * e1**4
        return e1, m2, m3, m4, ea


def local_scores(moments: Moments, basis: str) -> torch.Tensor:
    """Per-channel importance of one layer under the local basis ``basis`` (see the module docstring)."""
    _, m2, m3, m4, ea = moments.central()
    if basis == "l1norm":
        return ea
    k3, k4 = m3, m4 - 3 * m2**2
    if basis == "k34":
        return k3.abs().pow(1 / 3) + k4.abs().pow(1 / 4)
    if basis == "skew_kur":
        eps = 1e-12
        return (m3 / (m2 + eps).pow(1.5)).abs() + (m4 / (m2**2 + eps) - 3).abs()
    raise ValueError(f"unknown hos_local_basis {basis!r}; expected one of {LOCAL_BASES}")


def global_scores(local: Mapping[str, torch.Tensor], basis: str) -> dict[str, torch.Tensor]:
    """Make per-layer scores comparable across layers under the global basis ``basis``."""
    out = {}
    for name, s in local.items():
        s = s.to(torch.float64)
        if basis == "P1":
            out[name] = s.clone()
        elif basis == "P2":
            out[name] = s / s.mean().clamp_min(1e-12)
        elif basis == "P3":
            ranks = torch.empty_like(s)
            ranks[torch.argsort(s, stable=True)] = torch.arange(len(s), dtype=s.dtype)
            out[name] = (ranks + 1) / len(s)
        else:
            raise ValueError(f"unknown hos_global_basis {basis!r}; expected one of {GLOBAL_BASES}")
    return out


def response_modules(model: nn.Module, convs: Iterable[str]) -> dict[str, nn.Module]:
    """For each conv name, the module whose output is that conv's filter response: the BatchNorm registered
    right after it (same channel count) if there is one, else the conv itself."""
    modules = list(model.named_modules())
    index = {name: i for i, (name, _) in enumerate(modules)}
    out = {}
    for name in convs:
        conv = model.get_submodule(name)
        i = index[name]
        nxt = modules[i + 1][1] if i + 1 < len(modules) else None
        if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == conv.out_channels:
            out[name] = nxt
        else:
            out[name] = conv
    return out


@torch.no_grad()
def collect_moments(model: nn.Module, inputs: Iterable[torch.Tensor],
                    convs: Iterable[str]) -> dict[str, Moments]:
    """Per-channel moments of the responses of ``convs`` over the batches ``inputs`` (model in eval mode)."""
    targets = response_modules(model, convs)
    moments = {name: Moments(model.get_submodule(name).out_channels) for name in targets}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=name: moments[n].update(out))
               for name, m in targets.items()]
    was_training = model.training
    model.eval()
    try:
        for x in inputs:
            model(x)
            charge(x.shape[0], backward=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return moments


def hos_scores(model: nn.Module, inputs: Iterable[torch.Tensor], convs: Iterable[str], local_basis: str,
               global_basis: str) -> dict[str, torch.Tensor]:
    """Globally comparable filter scores of ``convs`` (higher = keep)."""
    moments = collect_moments(model, inputs, convs)
    return global_scores({n: local_scores(m, local_basis) for n, m in moments.items()}, global_basis)


# -- the method -----------------------------------------------------------------------------------------------

STAT_BATCHES = 4  # training batches whose responses give the statistics
PRUNE_SHARE = 0.5  # share of the step's parameter reduction taken by pruning; Tucker-2 does the rest
MAX_LAYER_PRUNE_RATIO = 0.8  # HOS has no such hyperparameter in the catalogue
KD_TEMPERATURE, KD_ALPHA = 4.0, 0.5  # distillation from the teacher during the KD fine-tune


def feature_points(model: nn.Module) -> list[str]:
    """Where the auxiliary MSE compares student and teacher: the outputs of the model's top-level containers
    (the stages ``layer1..3`` of a CIFAR ResNet, ``features`` of a VGG)."""
    return [name for name, m in model.named_children() if any(True for _ in m.children())]


class FeatureMSE:
    """Captures the outputs of the same-named modules of a student and a teacher with forward hooks and
    gives the mean relative MSE (MSE / teacher mean square) over the pairs whose shapes agree (pruned stages
    whose widths changed are skipped)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, points: list[str]) -> None:
        self.s: dict[str, torch.Tensor] = {}
        self.t: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in points:
            self.handles.append(student.get_submodule(name).register_forward_hook(self._keep(self.s, name)))
            self.handles.append(teacher.get_submodule(name).register_forward_hook(self._keep(self.t, name)))

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str):  # noqa: ANN205
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            store[name] = out
        return hook

    def loss(self) -> torch.Tensor:
        pairs = [(s, self.t[n]) for n, s in self.s.items() if n in self.t and self.t[n].shape == s.shape]
        if not pairs:
            return torch.zeros(())
        # MSE relative to the teacher's mean square, so the term is scale-free across stages and models
        return sum(F.mse_loss(s.float(), t.detach().float()) / t.detach().float().square().mean().clamp_min(1e-6)
                   for s, t in pairs) / len(pairs)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _prune(model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float,
           example: torch.Tensor) -> tuple[nn.Module, float]:
    """HOS-ranked pruning of ``ratio`` of the parameters, halving the share until the surgery can reach it
    (0 when ``model`` has no prunable layers). Returns (model, share actually asked for)."""
    layers = surgery.prunable_layers(model, example)
    if not layers or ratio <= 0:
        return model, 0.0
    inputs = train_inputs(task, STAT_BATCHES)
    scores = hos_scores(model, inputs, list(layers),
                        str(params["hos_local_basis"]), str(params["hos_global_basis"]))
    p0 = count_params(model)
    taken = take_out_activations(model)  # LMA activations: keep Torch-Pruning away from their parameters
    try:
        bare = count_params(model)
        share = ratio
        while share >= 0.01:
            try:
                pruned, _ = surgery.prune_by_scores(model, scores, share * p0 / bare, MAX_LAYER_PRUNE_RATIO, example)
                return put_back_activations(pruned, taken), share
            except CompressionError:
                share /= 2
    finally:
        put_back_activations(model, taken)
    return model, 0.0


def tucker(model: nn.Module, n_remove: int) -> tuple[nn.Module, dict[str, tuple[int, int]]]:
    """Replace the plain k x k convs of ``model`` (in place) by Tucker-2 layers so that at least (and close to)
    ``n_remove`` parameters go; ``CompressionError`` when that is out of reach."""
    if n_remove <= 0:
        return model, {}
    convs = lowrank.decomposable_convs(model)
    ranks, removed = lowrank.plan_ranks(convs, n_remove, lowrank.tucker2_ranks_at, lowrank.tucker2_params)
    if removed < n_remove - 0.03 * count_params(model):
        raise CompressionError(
            f"HOS: Tucker-2 of the {len(convs)} plain k x k convs can remove at most {removed} parameters, "
            f"{n_remove} are needed after pruning; lower the target")
    return lowrank.replace_convs(model, ranks, lowrank.Tucker2Conv.from_conv), ranks


class HOS(Method):
    """HOS-ranked filter pruning + Tucker-2 (HOOI) kernels + KD/auxiliary-MSE fine-tune + plain fine-tune.

    The step's reduction is split: pruning takes ``PRUNE_SHARE`` of it (less when the block-internal
    channels cannot give that much, none on a model without prunable layers), Tucker-2 takes what is left.
    """

    name: ClassVar[str] = "HOS"

    def compress(self, model: nn.Module, task: Task, params: Mapping[str, Any], ratio: float) -> nn.Module:
        p = resolve_params(self.name, params)
        p0 = count_params(model)
        example = task.data.example_input(1).to(task.device)
        student = copy.deepcopy(model).to(task.device)
        student, _ = _prune(student, task, p, PRUNE_SHARE * ratio, example)
        student, _ = tucker(student, count_params(student) - round((1 - ratio) * p0))
        check_reduction(self.name, p0, count_params(student), ratio)
        recalibrate_bn(student, train_inputs(task))
        budget = task.budget
        teacher = frozen_teacher(task, model)
        names = dict(teacher.named_modules())
        aux = FeatureMSE(student, teacher, [n for n in feature_points(student) if n in names])
        factor = float(p["aux_mse_factor"])
        try:
            finetune(student, task, budget.epochs_for(p["kd_finetune_epochs_factor"]), teacher=teacher,
                     kd_temperature=KD_TEMPERATURE, kd_alpha=KD_ALPHA,
                     hooks=Hooks(extra_loss=lambda *_: factor * aux.loss()) if factor > 0 else None)
        finally:
            aux.close()
        finetune(student, task, budget.epochs_for(p["finetune_epochs_factor"]), **task_distillation(task))
        return student
