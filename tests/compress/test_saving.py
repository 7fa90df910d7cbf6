import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from automc.compress.criteria import l2_weight
from automc.compress.models import build_model
from automc.compress.saving import load_compressed, save_compressed
from automc.compress.surgery import prunable_layers, prune_by_scores
from automc.errors import ValidationError


def _pruned(name="resnet8", size=16, width=4):
    torch.manual_seed(0)
    model = build_model(name, 10, width=width).eval()
    x = torch.randn(4, 3, size, size)
    pruned, record = prune_by_scores(model, l2_weight(prunable_layers(model, x)), 0.5, 0.9, x)
    return pruned.eval(), record, x


@pytest.mark.parametrize(("name", "size", "width"), [("resnet8", 16, 4), ("vgg11", 32, 8)])
def test_reload_with_automc_gives_same_outputs(tmp_path, name, size, width):
    pruned, record, x = _pruned(name, size, width)
    paths = save_compressed(pruned, tmp_path, x, record=record)
    arch = json.loads(paths["architecture"].read_text())
    assert arch["base"]["name"] == name and arch["record"]
    again = load_compressed(tmp_path)
    assert torch.allclose(again(x), pruned(x), atol=1e-6)


def test_standalone_file_loads_without_automc(tmp_path):
    pruned, record, x = _pruned()
    paths = save_compressed(pruned, tmp_path, x, record=record)
    torch.save({"x": x, "y": pruned(x).detach()}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({str(paths['standalone'])!r}).module()\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "assert 'automc' not in sys.modules\n"
        "print(float((m(io['x']) - io['y']).abs().max()), tuple(m(io['x'][:1]).shape))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"}, check=True)
    diff, shape = out.stdout.split(" ", 1)
    assert float(diff) < 1e-5 and shape.strip() == "(1, 10)"


def test_user_model_needs_its_base(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    pruned, _ = prune_by_scores(model, l2_weight(prunable_layers(model, x)), 0.3, 0.9, x)
    save_compressed(pruned, tmp_path, x)
    with pytest.raises(ValidationError, match="base_model"):
        load_compressed(tmp_path)
    base = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert torch.allclose(load_compressed(tmp_path, base)(x), pruned.eval()(x), atol=1e-6)


def test_not_a_saved_model(tmp_path):
    with pytest.raises(ValidationError, match="architecture.json"):
        load_compressed(tmp_path)
