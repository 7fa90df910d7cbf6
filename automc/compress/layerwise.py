"""Per-layer pruning: a policy is one keep ratio per prunable layer (the space AMC and SeerNet search).

The prunable layers are the block-internal convs of ``surgery`` (Torch-Pruning's dependency graph). A layer of
``c`` output channels keeps ``kept(k, c)`` of them for keep ratio ``k``. A policy's parameters and FLOPs are computed
exactly from the shapes, without building or training a model (``PolicySpace.params_of`` / ``flops_of``, checked
against the pruned model in the tests), so a target can be enforced before anything is trained: ``wall`` is AMC's
action clipping (the largest keep of one layer that still lets the layers after it reach the targets), ``uniform``
the one keep ratio for every layer that meets them. ``apply_policy`` removes each layer's lowest-scored channels by a
criterion of ``compress.criteria``.

A policy as text is its keep ratios joined by ``:`` (``0.5:0.25:1``), the ``layer_keep`` hyperparameter of the PLP
method; ``uniform`` there means "one ratio for every layer, solved for the step's target".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from automc.catalog.policy import Policy, kept
from automc.compress.metrics import count_flops
from automc.compress.surgery import Analysis, Record, analyse, prune_channels
from automc.errors import CompressionError, ValidationError


@dataclass(frozen=True)
class Layer:
    """One prunable layer as a policy sees it: its conv's shape and cost in the unpruned model."""

    name: str
    channels: int  # output channels
    in_channels: int
    kernel: int
    stride: int
    params: int  # the conv's weight
    flops: int  # the conv's FLOPs per image (2 per MAC)


class PolicySpace:
    """The prunable layers of one model and the exact parameters and FLOPs of any policy on it."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.model = model
        self.example_input = example_input[:1]
        self.analysis: Analysis = analyse(model, self.example_input)
        self.names: list[str] = list(self.analysis.layers)
        self.channels: list[int] = [lay.channels for lay in self.analysis.layers.values()]
        self.base_params: int = self.analysis.total_params
        self.base_flops: int = count_flops(model, self.example_input)
        self._flop_weights = self._weights_per_output()
        self.layers: list[Layer] = [self._layer(n) for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def _weights_per_output(self) -> list[tuple[nn.Parameter, int]]:
        """Each conv/linear weight with the FLOPs one of its elements costs per image (2 × output positions)."""
        spatial: dict[nn.Module, int] = {}

        def hook(mod: nn.Module, _: object, out: torch.Tensor) -> None:
            spatial[mod] = int(out[0].numel() // out.shape[1]) if isinstance(mod, nn.Conv2d) else int(
                out.numel() // out.shape[-1])

        mods = [m for m in self.model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        handles = [m.register_forward_hook(hook) for m in mods]
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                dev = next(self.model.parameters()).device
                self.model(self.example_input.to(dev).float())
        finally:
            self.model.train(was)
            for h in handles:
                h.remove()
        return [(m.weight, 2 * spatial[m]) for m in mods if m in spatial]

    def _layer(self, name: str) -> Layer:
        conv = self.analysis.layers[name].conv
        per = next(f for w, f in self._flop_weights if w is conv.weight)
        return Layer(name, conv.out_channels, conv.in_channels, int(conv.kernel_size[0]), int(conv.stride[0]),
                     conv.weight.numel(), conv.weight.numel() * per)

    # -- counting -------------------------------------------------------------------------------------------
    def check(self, policy: Sequence[float]) -> Policy:
        """``policy`` as a tuple, or ``ValidationError`` when its length or a ratio is wrong for this model."""
        policy = tuple(float(k) for k in policy)
        if len(policy) != len(self):
            raise ValidationError(f"the policy has {len(policy)} keep ratios; this model has {len(self)} prunable "
                                  f"layers", field="layer_keep")
        bad = next((i for i, k in enumerate(policy) if not 0.0 < k <= 1.0), None)
        if bad is not None:
            raise ValidationError(f"keep ratio {bad + 1} is {policy[bad]}, outside (0, 1]", field="layer_keep")
        return policy

    def removed(self, policy: Sequence[float]) -> dict[str, int]:
        """Output channels each layer loses under ``policy``."""
        return {n: c - kept(k, c) for n, c, k in zip(self.names, self.channels, policy, strict=True)}

    def _counts(self, removed: Mapping[str, int]) -> tuple[int, int]:
        params = self.analysis.params_after(removed)
        flops = self.base_flops + sum(per * (self.analysis.numel_after(w, removed) - w.numel())
                                      for w, per in self._flop_weights)
        return params, flops

    def params_of(self, policy: Sequence[float]) -> int:
        return self._counts(self.removed(self.check(policy)))[0]

    def flops_of(self, policy: Sequence[float]) -> int:
        return self._counts(self.removed(self.check(policy)))[1]

    def pr(self, policy: Sequence[float]) -> float:
        """Parameter reduction of ``policy`` against this model, computed."""
        return 1.0 - self.params_of(policy) / self.base_params

    def fr(self, policy: Sequence[float]) -> float:
        """FLOPs reduction of ``policy`` against this model, computed."""
        return 1.0 - self.flops_of(policy) / self.base_flops

    def meets(self, policy: Sequence[float], target_pr: float, target_fr: float | None = None) -> bool:
        params, flops = self._counts(self.removed(self.check(policy)))
        return params <= self._limit(self.base_params, target_pr) and (
            target_fr is None or flops <= self._limit(self.base_flops, target_fr))

    @staticmethod
    def _limit(base: int, target: float) -> int:
        """The largest count that still reduces ``base`` by ``target`` (the float product, rounded down)."""
        return math.floor(base * (1.0 - float(target)) + 1e-6)

    # -- targets --------------------------------------------------------------------------------------------
    def wall(self, prefix: Sequence[float], target_pr: float, target_fr: float | None = None, *,
             min_keep: float = 0.1) -> float:
        """The largest keep ratio of layer ``len(prefix)`` such that, with the layers before it at ``prefix`` and
        every layer after it at ``min_keep``, the policy still meets the targets (AMC's action clipping); raises
        ``CompressionError`` when even ``min_keep`` for this layer cannot (the targets are out of reach)."""
        t = len(prefix)
        if t >= len(self):
            raise ValueError(f"layer {t} of {len(self)}")
        rest = [min_keep] * (len(self) - t - 1)
        c = self.channels[t]
        lo, hi = kept(min_keep, c), c
        limit_p = self._limit(self.base_params, target_pr)
        limit_f = None if target_fr is None else self._limit(self.base_flops, target_fr)

        def ok(n: int) -> bool:
            params, flops = self._counts(self.removed([*prefix, n / c, *rest]))
            return params <= limit_p and (limit_f is None or flops <= limit_f)

        if not ok(lo):
            raise CompressionError(
                f"the targets (PR ≥ {target_pr:.1%}{'' if target_fr is None else f', FR ≥ {target_fr:.1%}'}) "
                f"cannot be reached with every layer keeping at least {min_keep:.0%} of its channels")
        while lo < hi:  # the most channels layer t may keep
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
        return lo / c

    def clip(self, policy: Sequence[float], target_pr: float, target_fr: float | None = None, *,
             min_keep: float = 0.1) -> Policy:
        """``policy`` with each ratio clipped, layer by layer, to ``[min_keep, wall]``: it meets the targets."""
        out: list[float] = []
        for k in self.check(policy):
            wall = self.wall(out, target_pr, target_fr, min_keep=min_keep)
            k = min(max(k, min_keep), wall)
            out.append(kept(k, self.channels[len(out)]) / self.channels[len(out)])
        return tuple(out)

    def project(self, policy: Sequence[float], target_pr: float, target_fr: float | None = None, *,
                min_keep: float = 0.1) -> Policy:
        """``policy`` within ``[min_keep, 1]``, scaled down by the largest factor ``s`` for which
        ``clip(s · policy)`` meets the targets (itself when it meets them), as channel counts over channels;
        raises ``CompressionError`` when every layer at ``min_keep`` cannot meet them."""
        p = [min(1.0, max(min_keep, float(k))) for k in policy]
        if not self.meets(self.check(p), target_pr, target_fr):
            if not self.meets([min_keep] * len(self), target_pr, target_fr):
                raise CompressionError(f"the targets cannot be reached with every layer keeping at least "
                                       f"{min_keep:.0%} of its channels")
            lo, hi = 0.0, 1.0  # the largest scale that meets them: bisection on a monotone count
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if self.meets([max(min_keep, mid * k) for k in p], target_pr, target_fr) \
                    else (lo, mid)
            p = [max(min_keep, lo * k) for k in p]
        return tuple(kept(k, c) / c for k, c in zip(p, self.channels, strict=True))

    def uniform(self, target_pr: float, target_fr: float | None = None, *, min_keep: float = 0.05) -> Policy:
        """The largest single keep ratio for every layer that meets the targets (in channel counts: each layer's
        ratio is its kept channels over its channels); raises ``CompressionError`` when none ≥ ``min_keep`` does."""
        floor_policy = [min_keep] * len(self)
        if not self.meets(floor_policy, target_pr, target_fr):
            raise CompressionError(f"a uniform keep ratio ≥ {min_keep:.0%} cannot reach PR {target_pr:.1%}"
                                   + ("" if target_fr is None else f" and FR {target_fr:.1%}"))
        lo, hi = min_keep, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.meets([mid] * len(self), target_pr, target_fr) else (lo, mid)
        return tuple(kept(lo, c) / c for c in self.channels)


# -- applying a policy ------------------------------------------------------------------------------------------

def channel_plan(analysis: Analysis, policy: Sequence[float], criterion: str) -> dict[str, list[int]]:
    """The output channels each layer loses under ``policy``: its lowest-scored by ``criterion`` (a name of
    ``compress.criteria.CRITERIA``), ties broken by index."""
    from automc.compress.criteria import CRITERIA

    if criterion not in CRITERIA:
        raise ValidationError(f"unknown criterion {criterion!r}; known: {', '.join(CRITERIA)}", field="criterion")
    scores = CRITERIA[criterion](analysis.layers)
    plan: dict[str, list[int]] = {}
    for (name, lay), k in zip(analysis.layers.items(), policy, strict=True):
        n_remove = lay.channels - kept(k, lay.channels)
        if n_remove:
            order = torch.argsort(torch.as_tensor(scores[name]).float(), stable=True)
            plan[name] = sorted(int(i) for i in order[:n_remove])
    return plan


def apply_policy(model: nn.Module, policy: Sequence[float], criterion: str, example_input: torch.Tensor
                 ) -> tuple[nn.Module, Record]:
    """A pruned copy of ``model`` whose layer ``i`` keeps ``kept(policy[i], channels)`` channels, the
    highest-scored by ``criterion``; and the pruning record. ``model`` is not modified."""
    pruned = copy.deepcopy(model)
    an = analyse(pruned, example_input)
    if len(policy) != len(an.layers):
        raise ValidationError(f"the policy has {len(policy)} keep ratios; this model has {len(an.layers)} prunable "
                              "layers", field="layer_keep")
    return prune_channels(pruned, channel_plan(an, policy, criterion), inplace=True, analysis=an)
