import copy
import json

import pytest
import torch

from automc.compress import layers, lowrank
from automc.compress.lfb import LFB, aux_loss
from automc.compress.metrics import count_flops, count_params
from automc.compress.models import build_model
from automc.compress.train import evaluate
from automc.errors import CompressionError


@pytest.mark.parametrize(("ratio", "aux"), [(0.4, "CE"), (0.7, "NLL")])
def test_lfb_hits_ratio_and_stays_learnable(trained, ratio, aux):
    model, task = trained
    before = copy.deepcopy(model.state_dict())
    out = LFB().compress(model, task, {"aux_loss": aux, "aux_loss_factor": 1.0, "finetune_epochs_factor": 1.0},
                         ratio)
    p0, p1 = count_params(model), count_params(out)
    assert abs((1 - p1 / p0) - ratio) <= 0.03
    x = task.data.example_input(2)
    assert count_flops(out, x) < count_flops(model, x)
    assert out(x).shape == model(x).shape
    assert evaluate(out, task.data).top1 > 0.6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert any(isinstance(m, lowrank.FilterBasisConv) for m in out.modules())
    fresh = layers.apply_specs(build_model("resnet8", 4, width=8),
                                json.loads(json.dumps(layers.lowrank_specs(out))))
    fresh.load_state_dict(out.state_dict())
    fresh.eval()
    assert torch.allclose(fresh(x), out(x), atol=1e-5)


def test_lfb_chains_on_a_factorised_model_or_says_why(trained):
    model, task = trained
    params = {"aux_loss": "CE", "aux_loss_factor": 0.5, "finetune_epochs_factor": 0.0}
    once = LFB().compress(model, task, params, 0.5)
    twice = LFB().compress(once, task, params, 0.3)  # factorises the basis convs of the first step
    assert abs((1 - count_params(twice) / count_params(once)) - 0.3) <= 0.03
    assert any(isinstance(m.basis, lowrank.FilterBasisConv) for m in twice.modules()
               if isinstance(m, lowrank.FilterBasisConv))
    with pytest.raises(CompressionError, match="at most"):
        LFB().compress(model, task, params, 0.99)


def test_aux_losses():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    assert aux_loss("CE", t, t) < aux_loss("CE", s, t)
    assert aux_loss("NLL", s, t) == torch.nn.functional.cross_entropy(s, t.argmax(1))

