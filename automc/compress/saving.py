"""Saving a compressed model twice: a standalone program that loads without automc, and a state dict plus
an architecture description (data, never pickled modules) that automc rebuilds the model from.

A saved directory holds

- ``model.pt2``: a ``torch.export`` program with a dynamic batch dimension; load it anywhere with
  ``torch.export.load(path).module()``. If export fails for a model, ``model.ts`` (TorchScript trace, load with
  ``torch.jit.load``) is written instead; ``architecture.json`` names the file under ``"standalone"``.
- ``model.onnx``: the same program for ONNX runtimes (opset 18, dynamic batch; input ``input``, output
  ``output``), converted from the ``torch.export`` program. If conversion fails, the save still succeeds:
  ``architecture.json`` holds ``"onnx": null`` and the reason under ``"onnx_error"``, and a ``UserWarning``
  is issued (the expensive part, the trained weights, must not be lost to an export limitation).
- ``state_dict.pt``: the weights (load with ``weights_only=True``).
- ``architecture.json``: ``base`` (``build_model`` arguments, or null for a user's own model),
  ``layers`` (type and shape of every ``Conv2d``, ``BatchNorm2d`` and ``Linear`` by module path),
  ``replaced`` (module path -> spec of every replacement module, from ``layers.lowrank_specs``), the pruning
  ``record`` if one is given, and the input ``input_shape``/``mean``/``std`` the model expects.

Rebuilding (``load_compressed``): build the base model, put the replacement modules back
(``layers.apply_specs``), re-create every Conv2d/BN/Linear whose recorded shape differs from the base's,
then load the state dict strictly.

For methods that replace layers (HOS, LFB, LMA): give the replacement module a JSON-able ``spec()`` and a
``from_spec`` classmethod and register its class with ``@layers.replacement_layer``; ``lowrank_specs`` /
``apply_specs`` then carry it through saving with no change here. Plain layers inside a replacement module
are described like any other, so a later pruning step on a replaced model reloads too.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automc.compress.layers import apply_specs, lowrank_specs, set_module
from automc.compress.models import build_model
from automc.errors import ValidationError

FORMAT = "automc-model/1"


def _layer_spec(m: nn.Module) -> dict[str, Any] | None:
    if isinstance(m, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": list(m.padding) if isinstance(m.padding, tuple) else m.padding,
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
    if isinstance(m, nn.BatchNorm2d):
        return {"type": "BatchNorm2d", "num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track_running_stats": m.track_running_stats}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    return None


def _build_layer(spec: dict[str, Any]) -> nn.Module:
    s = dict(spec)
    kind = s.pop("type")
    if kind == "Conv2d":
        pad = s["padding"]
        return nn.Conv2d(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]), tuple(s["stride"]),
                         tuple(pad) if isinstance(pad, list) else pad, tuple(s["dilation"]), s["groups"],
                         s["bias"])
    if kind == "BatchNorm2d":
        return nn.BatchNorm2d(s["num_features"], s["eps"], s["momentum"], s["affine"], s["track_running_stats"])
    if kind == "Linear":
        return nn.Linear(s["in_features"], s["out_features"], s["bias"])
    raise ValidationError(f"unknown layer type {kind!r}", field="layers")


def describe(model: nn.Module, *, record: Sequence[tuple[str, Sequence[int]]] | None = None,
             input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None) -> dict[str, Any]:
    """The architecture of ``model`` as JSON-able data (see the module docstring)."""
    layers = {name: spec for name, m in model.named_modules() if name and (spec := _layer_spec(m))}
    return {"format": FORMAT, "base": getattr(model, "automc_base", None), "layers": layers,
            "replaced": lowrank_specs(model),
            "record": [[name, list(map(int, idx))] for name, idx in record] if record else None,
            "input_shape": list(input_shape) if input_shape else None,
            "mean": list(mean) if mean else None, "std": list(std) if std else None}


def rebuild(arch: dict[str, Any], base_model: nn.Module | None = None) -> nn.Module:
    """An untrained model of the described architecture; ``base_model`` is needed when ``arch['base']`` is
    null (a user's own model). Raises ``ValidationError``."""
    if base_model is None:
        base = arch.get("base")
        if not base:
            raise ValidationError("the saved model is not a built-in one: pass base_model=<a fresh instance>",
                                  field="base")
        base_model = build_model(base["name"], base["num_classes"], width=base.get("width"))
    model = apply_specs(base_model, arch.get("replaced") or {})
    for path, spec in arch["layers"].items():
        try:
            current = model.get_submodule(path)
        except AttributeError:
            current = None
        if current is None or _layer_spec(current) != spec:
            set_module(model, path, _build_layer(spec))
    return model


def save_compressed(model: nn.Module, directory: str | Path, example_input: torch.Tensor, *,
                    record: Sequence[tuple[str, Sequence[int]]] | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    extra: dict[str, Any] | None = None, onnx: bool = True) -> dict[str, Path]:
    """Write ``model.pt2`` (or ``model.ts``), ``model.onnx``, ``state_dict.pt`` and ``architecture.json`` into
    ``directory``.

    ``example_input`` is a normalised input batch (any batch size); ``onnx=False`` skips ``model.onnx`` (the
    conversion costs about as long again as ``model.pt2``). Returns the written paths by role.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cpu = _cpu_eval_copy(model)
    x = example_input[:2].detach().float().cpu().contiguous()
    arch = describe(cpu, record=record, input_shape=x.shape[1:], mean=mean, std=std)
    paths = {"state_dict": out / "state_dict.pt", "architecture": out / "architecture.json"}
    torch.save(cpu.state_dict(), paths["state_dict"])
    paths["standalone"], program = _save_standalone(cpu, x, out)
    arch["standalone"] = paths["standalone"].name
    onnx_path = out / "model.onnx"
    for stale in (onnx_path, out / "model.onnx.data"):  # never leave an earlier save's file next to new weights
        stale.unlink(missing_ok=True)
    arch["onnx"], arch["onnx_error"] = None, None
    try:
        if onnx:
            paths["onnx"] = _save_onnx(program, cpu, x, onnx_path)
            arch["onnx"] = paths["onnx"].name
    except Exception as e:  # noqa: BLE001 - any exporter failure is recorded, not fatal (module docstring)
        onnx_path.unlink(missing_ok=True)
        reason = _root_cause(e)
        arch["onnx"], arch["onnx_error"] = None, reason
        warnings.warn(f"model.onnx not written ({reason}); {paths['standalone'].name} and state_dict.pt are",
                      UserWarning, stacklevel=2)
    if extra:
        arch["extra"] = extra
    paths["architecture"].write_text(json.dumps(arch, indent=1, sort_keys=True))
    return paths


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    import copy

    cpu = copy.deepcopy(model).cpu().float().eval()
    for p in cpu.parameters():
        p.data = p.data.contiguous()
    return cpu


def _save_standalone(model: nn.Module, x: torch.Tensor, out: Path) -> tuple[Path, Any]:
    """Write ``model.pt2`` (or ``model.ts``); returns the path and the exported program (None for TorchScript)."""
    if x.shape[0] < 2:
        x = torch.cat([x, x])
    for stale in ("model.pt2", "model.ts"):
        (out / stale).unlink(missing_ok=True)
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        path = out / "model.pt2"
        torch.export.save(program, path)
        return path, program
    except Exception:  # noqa: BLE001 - fall back to TorchScript for models export cannot handle
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, x)
        path = out / "model.ts"
        torch.jit.save(traced, path)
        return path, None


ONNX_OPSET = 18


def _root_cause(e: BaseException) -> str:
    """One line naming the innermost cause (the exporter wraps the useful message, e.g. the missing op)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def _save_onnx(program: Any, model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Convert the ``torch.export`` program (or export ``model`` afresh when there is none) to ONNX at ``path``."""
    import logging

    if x.shape[0] < 2:
        x = torch.cat([x, x])
    source = program if program is not None else model
    # One self-contained file; weights go to model.onnx.data only past protobuf's 2 GiB limit.
    big = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > 2**30
    dims = ({0: "batch"},) if program is not None else ({0: torch.export.Dim("batch", min=1)},)
    # The exporter logs about optional packages (torchvision) and warns about torch internals: not ours to show.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(source, (x,), str(path), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                              input_names=["input"], output_names=["output"], dynamic_shapes=dims,
                              external_data=big)
    finally:
        logger.setLevel(level)
    if not path.is_file():
        raise RuntimeError("the exporter wrote no file")
    return path


def load_compressed(directory: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by ``save_compressed`` (eval mode, CPU); raises ``ValidationError``."""
    d = Path(directory)
    arch_path = d / "architecture.json"
    if not arch_path.is_file():
        raise ValidationError("no architecture.json (not a saved automc model)", path=str(d))
    arch = json.loads(arch_path.read_text())
    if arch.get("format") != FORMAT:
        raise ValidationError(f"unknown format {arch.get('format')!r}, expected {FORMAT}", path=str(arch_path))
    model = rebuild(arch, base_model)
    state = torch.load(d / "state_dict.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValidationError(f"weights do not fit the described architecture: {str(e).splitlines()[0]}",
                              path=str(d)) from None
    return model.eval()


def load_standalone(path: str | Path) -> Any:
    """Load the standalone file (``.pt2`` or ``.ts``) as a callable module, as a user without automc would."""
    p = Path(path)
    if p.suffix == ".pt2":
        return torch.export.load(p).module()
    return torch.jit.load(p)
