"""``model.onnx`` next to ``model.pt2``: onnxruntime reproduces PyTorch's outputs for every method's output."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from automc.compress import METHODS, lma, lowrank
from automc.compress.saving import save_compressed

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# Tiny budgets: the point is the exported graph (pruned shapes, low-rank layers, LMA activations), not accuracy.
TINY = {"NS": {"finetune_epochs_factor": 0.2},
        "SFP": {"sfp_epochs_factor": 0.2},
        "LeGR": {"finetune_epochs_factor": 0.2, "ea_epochs_factor": 0.4},
        "HOS": {"kd_finetune_epochs_factor": 0.0, "finetune_epochs_factor": 0.2},
        "LFB": {"finetune_epochs_factor": 0.2},
        "LMA": {"finetune_epochs_factor": 0.2},
        "PLP": {"finetune_epochs_factor": 0.2}}
REPLACES = {"HOS": lowrank.Tucker2Conv, "LFB": lowrank.FilterBasisConv, "LMA": lma.MultiSegmentActivation}


def _onnx_matches(model: nn.Module, directory, example: torch.Tensor) -> None:
    """The saved ONNX file runs in onnxruntime at other batch sizes and agrees with ``model`` to 1e-4 (relative
    to the largest output when that is above 1)."""
    paths = save_compressed(model, directory, example)
    arch = json.loads(paths["architecture"].read_text())
    assert arch["onnx"] == "model.onnx" and arch["onnx_error"] is None and paths["onnx"].is_file()
    assert not (paths["onnx"].parent / "model.onnx.data").exists()  # one self-contained file
    proto = onnx.load(str(paths["onnx"]))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[0] == "batch"
    model = model.eval()
    for batch in (1, 5):
        x = torch.randn(batch, *example.shape[1:], generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {inp.name: x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        # float32 rounding grows with the outputs' size (random LMA slopes give logits in the tens)
        assert float(np.abs(got - want).max()) < 1e-4 * max(1.0, float(np.abs(want).max()))


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_output_exports_to_onnx(method, trained, tmp_path):
    model, task = trained
    out = METHODS[method]().compress(model, task, TINY[method], 0.4)
    if method in REPLACES:
        assert any(isinstance(m, REPLACES[method]) for m in out.modules())
    _onnx_matches(out, tmp_path, task.data.example_input(2))


@pytest.mark.slow
def test_lma_activations_far_from_relu_export_exactly(syn_model, tmp_path):
    # Trained briefly, LMA activations stay close to the ReLU they start as; shuffled breakpoints and large
    # slope changes make sure the exported formula is the piecewise-linear function itself.
    model = copy.deepcopy(syn_model).eval()
    lma.install_activations(model, 6)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for act in model.modules():
            if isinstance(act, lma.MultiSegmentActivation):
                act.params.weight.copy_(torch.randn(act.params.weight.shape, generator=gen))
    _onnx_matches(model, tmp_path, torch.randn(2, 3, 16, 16))


def test_onnx_failure_is_recorded_not_fatal(tmp_path):
    class NoOnnxOp(nn.Module):  # torch.export handles it; ONNX has no translation of airy_ai
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.special.airy_ai(x).flatten(1))

    (tmp_path / "model.onnx").write_bytes(b"stale")
    with pytest.warns(UserWarning, match="model.onnx not written"):
        paths = save_compressed(NoOnnxOp(), tmp_path, torch.randn(2, 3, 2, 2))
    arch = json.loads(paths["architecture"].read_text())
    assert arch["onnx"] is None and "airy_ai" in arch["onnx_error"]
    assert "onnx" not in paths and not (tmp_path / "model.onnx").exists()
    assert paths["standalone"].name == "model.pt2" and paths["state_dict"].is_file()


def test_onnx_can_be_skipped(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    (tmp_path / "model.onnx").write_bytes(b"stale")
    paths = save_compressed(model, tmp_path, torch.randn(2, 3, 8, 8), onnx=False)
    arch = json.loads(paths["architecture"].read_text())
    assert arch["onnx"] is None and arch["onnx_error"] is None and "onnx" not in paths
    assert not (tmp_path / "model.onnx").exists() and paths["standalone"].is_file()
