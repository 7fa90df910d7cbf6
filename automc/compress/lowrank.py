"""Low-rank layer replacement: Tucker-2 (HOOI) and filter-basis (truncated SVD) factorisations of a conv.

Pure functions on ``nn.Conv2d`` plus two replacement modules. Each replacement module describes itself with
``spec()`` (a JSON-able dict) and is registered in ``layers.SPEC_TYPES``, so saving rebuilds it
(``layers.lowrank_specs`` / ``layers.apply_specs``) and a compressed model reloads from a state dict.

Only plain convs are factorised: ``groups == 1``, zero padding, a kernel larger than 1x1. On a model that is
already low-rank that includes the k x k core / basis conv inside a replacement module, so replacements nest
(path ``a.conv1.core`` inside ``a.conv1``); the 1x1 factors are never factorised.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from automc.compress.layers import replacement_layer, set_module

__all__ = [
    "FilterBasisConv",
    "Tucker2Conv",
    "decomposable_convs",
    "filter_basis_params",
    "plan_ranks",
    "replace_convs",
    "tucker2_params",
]


def _pair(v: Any) -> Any:
    return list(v) if isinstance(v, tuple | list) else v


def _geometry(conv: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": list(conv.kernel_size),
        "stride": list(conv.stride),
        "padding": _pair(conv.padding),
        "dilation": list(conv.dilation),
        "bias": conv.bias is not None,
    }


def _kernel_geometry(conv: nn.Conv2d) -> dict[str, Any]:
    g = _geometry(conv)
    return {k: g[k] for k in ("kernel_size", "stride", "padding", "dilation")}


def _in_channels(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv2d) else int(m.spec()["in_channels"])  # type: ignore[operator]


def _as_conv_arg(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _top_eigvecs(m: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``m`` (eigenvectors of m m^T), signs fixed."""
    vecs = torch.linalg.eigh(m @ m.T).eigenvectors.flip(1)[:, :r]
    signs = torch.sign(vecs[vecs.abs().argmax(0), torch.arange(r)])
    return vecs * torch.where(signs == 0, 1.0, signs)


def hooi2(weight: torch.Tensor, r_out: int, r_in: int, n_iter: int = 10
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 of a (C_out, C_in, kh, kw) kernel by HOOI on modes 0 and 1 (HOSVD start, ``n_iter``
    alternating updates); returns (core (r_out, r_in, kh, kw), U_out (C_out, r_out), U_in (C_in, r_in)).

    The same algorithm as tensorly's ``partial_tucker(w, [r_out, r_in], modes=[0, 1])`` (the tests compare
    the two), computed with eigendecompositions of C x C Gram matrices in float64 on the weight's device,
    which is deterministic and takes well under a second for a 512 x 512 x 3 x 3 kernel where tensorly's
    SVD of the full unfoldings takes about a minute.
    """
    w = weight.detach().to(torch.float64)
    o, i = w.shape[:2]
    u_out = _top_eigvecs(w.reshape(o, -1), r_out)
    u_in = _top_eigvecs(w.transpose(0, 1).reshape(i, -1), r_in)
    for _ in range(n_iter):
        y = torch.einsum("oiab,is->osab", w, u_in)
        u_out = _top_eigvecs(y.reshape(o, -1), r_out)
        z = torch.einsum("oiab,or->riab", w, u_out)
        u_in = _top_eigvecs(z.transpose(0, 1).reshape(i, -1), r_in)
    core = torch.einsum("oiab,or,is->rsab", w, u_out, u_in)
    return core.cpu(), u_out.cpu(), u_in.cpu()


@replacement_layer
class Tucker2Conv(nn.Module):
    """A k x k conv as 1x1 (C_in -> r_in), k x k core (r_in -> r_out), 1x1 (r_out -> C_out).

    Kim et al. (2016) / the HOS paper: Tucker-2 decomposition of the kernel on its two channel modes.
    """

    kind = "tucker2"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, ranks: tuple[int, int] = (1, 1),
                 bias: bool = False) -> None:
        super().__init__()
        r_in, r_out = int(ranks[0]), int(ranks[1])
        self.first = nn.Conv2d(in_channels, r_in, 1, bias=False)
        self.core: nn.Module = nn.Conv2d(r_in, r_out, _as_conv_arg(kernel_size), _as_conv_arg(stride),
                                         _as_conv_arg(padding), _as_conv_arg(dilation), bias=False)
        self.last = nn.Conv2d(r_out, out_channels, 1, bias=bias)
        self._geometry = _kernel_geometry(self.core)

    @property
    def ranks(self) -> tuple[int, int]:
        return self.first.out_channels, self.last.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``layers.module_from_spec(m.spec())`` rebuilds the same shapes. The core may
        itself be replaced later (it then has its own spec at ``<path>.core``). Read from the live layers,
        so it stays right after channel pruning."""
        return {"type": self.kind, "in_channels": self.first.in_channels, "out_channels": self.last.out_channels,
                **copy.deepcopy(self._geometry), "bias": self.last.bias is not None, "ranks": list(self.ranks)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Tucker2Conv:
        return cls(spec["in_channels"], spec["out_channels"], spec["kernel_size"], spec["stride"],
                   spec["padding"], spec["dilation"], tuple(spec["ranks"]), spec["bias"])

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: tuple[int, int], n_iter: int = 10) -> Tucker2Conv:
        """HOOI of ``conv.weight`` on its two channel modes (``hooi2``); exact at full ranks."""
        _check_plain(conv)
        r_in = max(1, min(int(ranks[0]), conv.in_channels))
        r_out = max(1, min(int(ranks[1]), conv.out_channels))
        core, u_out, u_in = hooi2(conv.weight, r_out, r_in, n_iter)
        g = _geometry(conv)
        new = cls(g["in_channels"], g["out_channels"], g["kernel_size"], g["stride"], g["padding"],
                  g["dilation"], (r_in, r_out), g["bias"])
        dtype, device = conv.weight.dtype, conv.weight.device
        with torch.no_grad():
            new.first.weight.copy_(u_in.T[:, :, None, None])
            new.core.weight.copy_(core)
            new.last.weight.copy_(u_out[:, :, None, None])
            if conv.bias is not None:
                new.last.bias.copy_(conv.bias.detach())
        return new.to(device=device, dtype=dtype)


@replacement_layer
class FilterBasisConv(nn.Module):
    """A k x k conv as a basis conv (C_in -> m filters, k x k) and a 1x1 combination (m -> C_out).

    Li et al. (ICCV 2019), "Learning Filter Basis": every output filter is a linear combination of m learned
    basis filters. Initialised from a truncated SVD of the weight reshaped to (C_out, C_in*k*k).
    """

    kind = "filter_basis"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, basis: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.basis: nn.Module = nn.Conv2d(in_channels, int(basis), _as_conv_arg(kernel_size),
                                          _as_conv_arg(stride), _as_conv_arg(padding), _as_conv_arg(dilation),
                                          bias=False)
        self.combine = nn.Conv2d(int(basis), out_channels, 1, bias=bias)
        self._geometry = _kernel_geometry(self.basis)

    @property
    def rank(self) -> int:
        return self.combine.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.basis(x))

    def spec(self) -> dict[str, Any]:
        """JSON-able description; ``layers.module_from_spec(m.spec())`` rebuilds the same shapes. The basis conv may
        itself be replaced later (it then has its own spec at ``<path>.basis``). Read from the live layers,
        so it stays right after channel pruning."""
        return {"type": self.kind, "in_channels": _in_channels(self.basis),
                "out_channels": self.combine.out_channels, **copy.deepcopy(self._geometry),
                "bias": self.combine.bias is not None, "basis": self.rank}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> FilterBasisConv:
        return cls(spec["in_channels"], spec["out_channels"], spec["kernel_size"], spec["stride"],
                   spec["padding"], spec["dilation"], spec["basis"], spec["bias"])

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, basis: int) -> FilterBasisConv:
        """Truncated SVD W = U S V^T: basis = sqrt(S) V^T, combination = U sqrt(S); exact at full rank."""
        _check_plain(conv)
        c_out = conv.out_channels
        w = conv.weight.detach().to("cpu", torch.float64).reshape(c_out, -1)
        m = max(1, min(int(basis), min(w.shape)))
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[:m].sqrt()
        g = _geometry(conv)
        new = cls(g["in_channels"], c_out, g["kernel_size"], g["stride"], g["padding"], g["dilation"], m,
                  g["bias"])
        with torch.no_grad():
            new.basis.weight.copy_((root[:, None] * vh[:m]).reshape(new.basis.weight.shape))
            new.combine.weight.copy_((u[:, :m] * root[None, :])[:, :, None, None])
            if conv.bias is not None:
                new.combine.bias.copy_(conv.bias.detach())
        return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def _check_plain(conv: nn.Conv2d) -> None:
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("only plain nn.Conv2d layers (groups=1, zero padding) can be factorised")


def decomposable_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Plain k x k convs (k > 1, groups 1, zero padding), in module order.

    This includes the k x k core of a Tucker-2 layer and the basis conv of a filter-basis layer, so a
    low-rank step on a low-rank model factorises those further (nested replacements); the 1x1 factors
    are never offered.
    """
    return [(name, m) for name, m in model.named_modules()
            if type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
            and math.prod(m.kernel_size) > 1]


def tucker2_params(conv: nn.Conv2d, ranks: tuple[int, int]) -> int:
    """Parameters of the Tucker-2 replacement of ``conv`` at ``ranks`` = (r_in, r_out)."""
    r_in, r_out = ranks
    k = math.prod(conv.kernel_size)
    bias = conv.out_channels if conv.bias is not None else 0
    return conv.in_channels * r_in + r_in * r_out * k + r_out * conv.out_channels + bias


def filter_basis_params(conv: nn.Conv2d, basis: int) -> int:
    """Parameters of the filter-basis replacement of ``conv`` with ``basis`` filters."""
    k = math.prod(conv.kernel_size)
    bias = conv.out_channels if conv.bias is not None else 0
    return basis * conv.in_channels * k + basis * conv.out_channels + bias


def tucker2_ranks_at(conv: nn.Conv2d, a: float) -> tuple[int, int]:
    """Ranks keeping the share ``a`` of each channel mode."""
    return max(1, math.ceil(a * conv.in_channels)), max(1, math.ceil(a * conv.out_channels))


def filter_basis_rank_at(conv: nn.Conv2d, a: float) -> int:
    """Basis size keeping the share ``a`` of the full rank min(C_out, C_in*k*k)."""
    return max(1, math.ceil(a * min(conv.out_channels, conv.in_channels * math.prod(conv.kernel_size))))


def plan_ranks(convs: Iterable[tuple[str, nn.Conv2d]], n_remove: int,
               rank_at: Callable[[nn.Conv2d, float], Any],
               params_of: Callable[[nn.Conv2d, Any], int]) -> tuple[dict[str, Any], int]:
    """Choose per-layer ranks that remove at least (and close to) ``n_remove`` parameters.

    Every layer keeps the same share ``a`` of its rank (bisection on ``a``); a layer is replaced only where
    that saves parameters. Layers are then given back rank one at a time while the target still holds, to
    cut the overshoot. Returns (name -> rank, parameters removed); removed < ``n_remove`` means the target
    is out of reach even at rank 1.
    """
    convs = list(convs)
    orig = {n: c.weight.numel() + (c.bias.numel() if c.bias is not None else 0) for n, c in convs}

    def plan(a: float) -> tuple[dict[str, Any], int]:
        ranks, removed = {}, 0
        for n, c in convs:
            r = rank_at(c, a)
            saved = orig[n] - params_of(c, r)
            if saved > 0:
                ranks[n], removed = r, removed + saved
        return ranks, removed

    lo, hi = 0.0, 1.0  # removed(lo) >= target (if reachable), removed(hi) < target
    ranks, removed = plan(lo)
    if removed < n_remove:
        return ranks, removed
    if plan(hi)[1] >= n_remove:
        return plan(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if plan(mid)[1] >= n_remove:
            lo = mid
        else:
            hi = mid
    ranks, removed = plan(lo)
    looser, _ = plan(hi)
    # Greedy give-back: move single layers to their looser rank while the target still holds.
    for n, c in sorted(convs, key=lambda nc: -orig[nc[0]]):
        if n not in looser or looser[n] == ranks.get(n):
            continue
        before = orig[n] - params_of(c, ranks[n]) if n in ranks else 0
        after = orig[n] - params_of(c, looser[n])
        if after > 0 and removed - before + after >= n_remove:
            ranks[n], removed = looser[n], removed - before + after
    return ranks, removed


def replace_convs(model: nn.Module, ranks: Mapping[str, Any],
                  build: Callable[[nn.Conv2d, Any], nn.Module]) -> nn.Module:
    """Replace each named conv with ``build(conv, rank)`` (in place); returns ``model``."""
    for name, r in ranks.items():
        set_module(model, name, build(model.get_submodule(name), r))
    return model

