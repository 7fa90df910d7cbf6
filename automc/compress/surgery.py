"""Channel surgery: the only code that removes channels (wrapping Torch-Pruning's ``DependencyGraph``).

Methods decide *what* to remove (per-channel scores, or an explicit plan); this module removes it.

Only **block-internal** output channels are pruned: a conv is prunable when removing one of its output
channels touches nothing but its own BN and the input channels of the layers it feeds (no residual add, no
concatenation, no grouped conv). In the CIFAR ResNets that is ``conv1`` of every basic block (``conv1`` and
``conv2`` of a bottleneck); in VGG every conv. The residual stream, whose option-A shortcut slices and pads
channels, is never touched (Torch-Pruning couples those convs through the add, so the rule rejects them).

A pruning ``record`` is data: ``[(layer name, [removed output-channel indices]), ...]`` in the order applied;
``replay(model, record)`` rebuilds the same architecture from a fresh copy of the base model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from automc.errors import CompressionError, ValidationError

Record = list[tuple[str, list[int]]]


@dataclass
class _Entry:
    """One parameter tensor whose size depends on prunable layers: ``shape`` scaled along ``dims``."""

    shape: tuple[int, ...]
    out_owner: tuple[str, int, int] | None = None  # (layer, dim, channels per layer channel)
    in_owner: tuple[str, int, int] | None = None

    def numel(self, removed: Mapping[str, int]) -> int:
        shape = list(self.shape)
        for owner in (self.out_owner, self.in_owner):
            if owner is not None:
                layer, dim, mult = owner
                shape[dim] -= mult * removed.get(layer, 0)
        return math.prod(shape)


@dataclass
class PrunableLayer:
    """A conv whose output channels may be removed, with the BN that follows it (if any)."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    channels: int


@dataclass
class Analysis:
    """The dependency graph of a model, its prunable layers and an exact parameter-count model."""

    model: nn.Module
    graph: tp.DependencyGraph
    layers: dict[str, PrunableLayer]
    total_params: int
    _entries: dict[int, _Entry] = field(default_factory=dict)  # id(param) -> entry
    _by_layer: dict[str, list[_Entry]] = field(default_factory=dict)

    def params_after(self, removed: Mapping[str, int]) -> int:
        """Exact parameter count after removing ``removed[layer]`` output channels from each layer."""
        delta = sum(e.numel(removed) - math.prod(e.shape) for e in self._entries.values())
        return self.total_params + delta

    def numel_after(self, param: nn.Parameter, removed: Mapping[str, int]) -> int:
        """Exact element count of one of the model's parameter tensors after removing ``removed[layer]`` output
        channels from each layer (unchanged for a tensor no prunable layer touches)."""
        e = self._entries.get(id(param))
        return param.numel() if e is None else e.numel(removed)

    def removal_cost(self, removed: Mapping[str, int], layer: str) -> int:
        """Parameters removed by taking one more output channel out of ``layer`` (given ``removed``)."""
        after = dict(removed)
        after[layer] = after.get(layer, 0) + 1
        return sum(e.numel(removed) - e.numel(after) for e in self._by_layer[layer])


def _default_input(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters())
    return torch.randn(1, 3, 32, 32, device=p.device)


def analyse(model: nn.Module, example_input: torch.Tensor | None = None) -> Analysis:
    """Build the dependency graph of ``model`` and find its prunable block-internal convs."""
    x = example_input if example_input is not None else _default_input(model)
    x = x[:1].to(next(model.parameters()).device).float()
    was = model.training
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    finally:
        model.train(was)
    layers: dict[str, PrunableLayer] = {}
    entries: dict[int, _Entry] = {}
    by_layer: dict[str, list[_Entry]] = {}
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.out_channels < 2:
            continue
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
        outs, ins, ok = [], [], True
        for dep, idxs in group:
            mod = dep.target.module
            if not isinstance(mod, nn.Module) or not any(True for _ in mod.parameters(recurse=False)):
                continue  # parameter-free ops (ReLU, pooling, flatten) follow along
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            if isinstance(mod, nn.Conv2d) and mod.groups != 1 or not isinstance(
                    mod, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                ok = False
                break
            (outs if is_out else ins).append((mod, len(idxs)))
        param_outs = [m for m, _ in outs if not isinstance(m, nn.BatchNorm2d)]
        if not ok or param_outs != [conv] or not ins or any(isinstance(m, nn.BatchNorm2d) for m, _ in ins):
            continue
        bns = [m for m, _ in outs if isinstance(m, nn.BatchNorm2d)]
        layers[name] = PrunableLayer(name, conv, bns[0] if bns else None, conv.out_channels)
        for mod, mult in outs + ins:
            is_out = any(mod is m for m, _ in outs)
            for pname, p in mod.named_parameters(recurse=False):
                e = entries.setdefault(id(p), _Entry(tuple(p.shape)))
                if is_out:
                    e.out_owner = (name, 0, mult)
                elif pname == "weight" and p.dim() >= 2:
                    e.in_owner = (name, 1, mult)
                else:
                    continue
                by_layer.setdefault(name, []).append(e)
    total = sum(p.numel() for p in model.parameters())
    return Analysis(model, dg, layers, total, entries, by_layer)


def prunable_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, PrunableLayer]:
    """Prunable block-internal convs of ``model`` (name -> layer with its BN), in module order."""
    return analyse(model, example_input).layers


def _resolve(model: nn.Module, layers: Mapping[str, PrunableLayer], key: nn.Module | str) -> str:
    name = key if isinstance(key, str) else next((n for n, m in model.named_modules() if m is key), "")
    if name not in layers:
        raise ValidationError(f"{name or type(key).__name__!r} is not a prunable block-internal conv; prunable: "
                              f"{', '.join(list(layers)[:6])}{' ...' if len(layers) > 6 else ''}", field="plan")
    return name


def prune_channels(model: nn.Module, plan: Mapping[nn.Module | str, Sequence[int]],
                   example_input: torch.Tensor | None = None, *, inplace: bool = False,
                   analysis: Analysis | None = None) -> tuple[nn.Module, Record]:
    """Remove output channels ``plan[conv]`` (a module of ``model`` or its name) and everything that depends
    on them; return the physically smaller model (a copy unless ``inplace``) and the record.

    Raises ``ValidationError`` for a non-prunable layer, an index out of range, or a plan emptying a layer.
    """
    if not inplace:
        if any(not isinstance(k, str) for k in plan):
            names = {m: n for n, m in model.named_modules()}
            plan = {names.get(k, "?") if not isinstance(k, str) else k: v for k, v in plan.items()}
        model = copy.deepcopy(model)
        analysis = None
    an = analysis if analysis is not None else analyse(model, example_input)
    record: Record = []
    for key, idxs in plan.items():
        name = _resolve(model, an.layers, key)
        layer = an.layers[name]
        idx = sorted({int(i) for i in idxs})
        if not idx:
            continue
        n = layer.conv.out_channels
        if idx[0] < 0 or idx[-1] >= n:
            raise ValidationError(f"channel index out of range 0..{n - 1}", field=name)
        if len(idx) >= n:
            raise ValidationError(f"cannot remove all {n} channels", field=name)
        record.append((name, idx))
    for name, idx in record:
        group = an.graph.get_pruning_group(an.layers[name].conv, tp.prune_conv_out_channels, idxs=idx)
        group.prune()
    return model, record


def replay(model: nn.Module, record: Record, example_input: torch.Tensor | None = None) -> nn.Module:
    """Apply a pruning record to ``model`` (in place, entries in order) and return it."""
    an = analyse(model, example_input)
    for name, idx in record:
        prune_channels(model, {name: idx}, inplace=True, analysis=an)
    return model


def select_channels(model: nn.Module, scores: Mapping[str, torch.Tensor], ratio: float,
                    max_layer_ratio: float = 0.9, example_input: torch.Tensor | None = None, *,
                    analysis: Analysis | None = None, tolerance: float = 0.03) -> dict[str, list[int]]:
    """Choose output channels to remove so that ``ratio`` of ``model``'s parameters go.

    Channels are taken globally from the lowest score up (``scores[layer]`` is a 1-D tensor with one value
    per output channel of that prunable layer; layers without scores are left alone), never more than
    ``floor(max_layer_ratio * channels)`` of a layer and always keeping one. Parameters are counted exactly
    (a removed output channel also removes its BN parameters and the next layer's input slice). A channel
    whose cost would overshoot the target by more than 1 pp is skipped for cheaper ones further down the
    ranking. Raises ``CompressionError`` when the result would miss the target by more than ``tolerance``.
    """
    an = analysis if analysis is not None else analyse(model, example_input)
    total = an.total_params
    target = ratio * total
    slack = 0.01 * total
    cands = []
    for name, s in scores.items():
        if name not in an.layers:
            raise ValidationError(f"{name!r} is not a prunable layer", field="scores")
        s = torch.as_tensor(s).detach().float().flatten().cpu()
        if s.numel() != an.layers[name].conv.out_channels:
            raise ValidationError(f"expected {an.layers[name].conv.out_channels} scores, got {s.numel()}",
                                  field=name)
        order = list(an.layers).index(name)
        cands += [(float(v), order, i, name) for i, v in enumerate(s.tolist())]
    cands.sort(key=lambda c: (c[0] if math.isfinite(c[0]) else math.inf, c[1], c[2]))
    removed: dict[str, int] = {}
    plan: dict[str, list[int]] = {}
    cap = {n: min(int(math.floor(max_layer_ratio * lay.channels + 1e-9)), lay.channels - 1)
           for n, lay in an.layers.items()}
    done = 0
    for _, _, i, name in cands:
        if done >= target:
            break
        if removed.get(name, 0) >= cap[name]:
            continue
        cost = an.removal_cost(removed, name)
        if done + cost > target + slack:
            continue
        removed[name] = removed.get(name, 0) + 1
        plan.setdefault(name, []).append(i)
        done += cost
    if done < target - tolerance * total:
        raise CompressionError(
            f"cannot remove {ratio:.1%} of the parameters by pruning block-internal channels: at most "
            f"{done / total:.1%} is reachable with max_layer_prune_ratio={max_layer_ratio} "
            f"({len(an.layers)} prunable layers); raise max_layer_prune_ratio or lower the target")
    return plan


def prune_by_scores(model: nn.Module, scores: Mapping[str, torch.Tensor], ratio: float,
                    max_layer_ratio: float = 0.9, example_input: torch.Tensor | None = None
                    ) -> tuple[nn.Module, Record]:
    """Remove the globally lowest-scored channels until ``ratio`` of the parameters are gone (±3 pp).

    Returns a pruned copy of ``model`` and the record. See ``select_channels`` for the rules; raises
    ``CompressionError`` when the target is out of reach.
    """
    pruned = copy.deepcopy(model)
    an = analyse(pruned, example_input)
    plan = select_channels(pruned, scores, ratio, max_layer_ratio, analysis=an)
    return prune_channels(pruned, plan, inplace=True, analysis=an)
