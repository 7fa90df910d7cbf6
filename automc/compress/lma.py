"""LMA: distillation into a narrower student with light multi-segment (piecewise-linear) activations.

Xu et al., "Light Multi-segment Activation for Model Compression", AAAI 2020.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MultiSegmentActivation(nn.Module):
    """Continuous piecewise-linear activation with ``segments`` pieces, shared by a layer's channels.

    f(x) = c + s0 * x + sum_j d_j * relu(x - b_j) over ``segments - 1`` learnable breakpoints b_j with slope
    changes d_j; initialised to ReLU (s0 = c = 0, one breakpoint at 0 with d = 1, the others spread over
    [-bound, bound] with d = 0). Evaluated as one table lookup (slope, intercept of x's segment), so memory
    does not grow with the number of segments.
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
        self.breakpoints = nn.Parameter(b)
        self.deltas = nn.Parameter(d)
        self.slope0 = nn.Parameter(torch.zeros(()))
        self.offset = nn.Parameter(torch.zeros(()))

    @property
    def segments(self) -> int:
        return self.breakpoints.numel() + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, order = torch.sort(self.breakpoints)
        d = self.deltas[order]
        zero = self.slope0.reshape(1)
        slopes = torch.cat([zero, self.slope0 + torch.cumsum(d, 0)])  # slope of each segment
        intercepts = torch.cat([self.offset.reshape(1), self.offset - torch.cumsum(d * b, 0)])
        seg = torch.bucketize(x.detach(), b.detach().to(x.dtype))  # segment index: number of b_j < x
        return slopes.to(x.dtype)[seg] * x + intercepts.to(x.dtype)[seg]

    def spec(self) -> dict[str, Any]:
        return {"type": "multi_segment_activation", "segments": self.segments}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MultiSegmentActivation:
        return cls(int(spec["segments"]))

    def extra_repr(self) -> str:
        return f"segments={self.segments}"
