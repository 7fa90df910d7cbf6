"""Channel criteria: plain callables ``criterion(layers) -> {layer name: 1-D score per output channel}``.

A higher score means a more important channel. ``layers`` is ``surgery.prunable_layers(model)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from automc.compress.surgery import PrunableLayer

Scores = dict[str, torch.Tensor]
Criterion = Callable[[Mapping[str, PrunableLayer]], Scores]


def _weights(layer: PrunableLayer) -> torch.Tensor:
    return layer.conv.weight.detach().float().flatten(1)


def l1_weight(layers: Mapping[str, PrunableLayer]) -> Scores:
    """L1 norm of each output filter (Li et al., Pruning Filters for Efficient ConvNets, 2017)."""
    return {n: _weights(lay).abs().sum(1).cpu() for n, lay in layers.items()}


def l2_weight(layers: Mapping[str, PrunableLayer]) -> Scores:
    """L2 norm of each output filter (the SFP criterion; Torch-Pruning's MagnitudeImportance p=2)."""
    return {n: _weights(lay).norm(dim=1).cpu() for n, lay in layers.items()}


def l2_bn(layers: Mapping[str, PrunableLayer]) -> Scores:
    """|gamma| of the BN after the conv (Network Slimming); the filter's L2 norm where there is no BN."""
    out = {}
    for n, lay in layers.items():
        out[n] = (lay.bn.weight.detach().float().abs().cpu() if lay.bn is not None
                  else _weights(lay).norm(dim=1).cpu())
    return out


def l2_bn_param(layers: Mapping[str, PrunableLayer]) -> Scores:
    """|gamma| times the filter's L2 norm."""
    w = l2_weight(layers)
    g = l2_bn(layers)
    return {n: (w[n] * g[n]) if layers[n].bn is not None else w[n] for n in layers}


def random_scores(layers: Mapping[str, PrunableLayer], seed: int = 0) -> Scores:
    """Uniform random scores: the sanity baseline."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(lay.conv.out_channels, generator=gen) for n, lay in layers.items()}


CRITERIA: dict[str, Criterion] = {
    "l1_weight": l1_weight,
    "l2_weight": l2_weight,
    "l2_bn": l2_bn,
    "l2_bn_param": l2_bn_param,
    "random": random_scores,
}
