import copy
import json

import pytest
import torch

from automc.compress import layers, lma
from automc.compress.base import Task, TrainBudget
from automc.compress.data import synthetic
from automc.compress.lma import LMA, MultiSegmentActivation
from automc.compress.metrics import count_flops, count_params
from automc.compress.models import build_model
from automc.compress.surgery import replay
from automc.compress.train import evaluate, finetune
from automc.errors import CompressionError


@pytest.mark.parametrize("segments", [2, 3, 6, 8, 10])
def test_activation_at_init_is_relu(segments):
    act = MultiSegmentActivation(segments)
    x = torch.randn(4, 5, 6, 6) * 3
    assert torch.equal(act(x), torch.relu(x))
    assert act.segments == segments


def test_activation_is_the_hinge_sum_and_learns():
    torch.manual_seed(0)
    act = MultiSegmentActivation(6)
    with torch.no_grad():
        act.params.weight.add_(torch.randn(12) * 0.5)
    x = torch.randn(1000) * 3
    hinges = zip(act.deltas, act.breakpoints, strict=True)
    ref = act.offset + act.slope0 * x + sum(d * torch.relu(x - b) for d, b in hinges)
    assert torch.allclose(act(x), ref, atol=1e-5)
    act(x).square().mean().backward()
    assert (act.params.weight.grad != 0).all()


def test_training_keeps_the_activation_stable():
    torch.manual_seed(0)
    data = synthetic()
    task = Task(data, 0.5, TrainBudget(epochs=3, batch_size=32, lr=0.1))
    model = build_model("resnet8", 4, width=8)
    lma.install_activations(model, 10)
    finetune(model, task, 2)
    assert evaluate(model, data).top1 > 0.6


PARAMS = {"lma_segments": 8, "kd_temperature": 3, "kd_alpha": 0.5, "finetune_epochs_factor": 1.0}


@pytest.mark.parametrize("ratio", [0.4, 0.7])
def test_lma_hits_ratio_and_stays_learnable(trained, ratio):
    model, task = trained
    before = copy.deepcopy(model.state_dict())
    out = LMA().compress(model, task, PARAMS, ratio)
    assert abs((1 - count_params(out) / count_params(model)) - ratio) <= 0.03
    x = task.data.example_input(2)
    assert count_flops(out, x) < count_flops(model, x)
    assert out(x).shape == model(x).shape
    acts = lma.activation_specs(out)
    assert len(acts) == 7 and all(s["segments"] == 8 for s in acts.values())  # stem + 2 per block
    assert evaluate(out, task.data).top1 > 0.6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_student_reloads_from_record_and_specs(trained):
    model, task = trained
    out = LMA().compress(model, task, {**PARAMS, "finetune_epochs_factor": 0.2}, 0.5)
    # the pruned shapes (as a record) plus the activation specs rebuild the student
    fresh = build_model("resnet8", 4, width=8)
    record = [(name, list(range(out.get_submodule(name).out_channels, m.out_channels)))
              for name, m in fresh.named_modules() if name.endswith(".conv1")
              and out.get_submodule(name).out_channels < m.out_channels]
    replay(fresh, record, task.data.example_input(1))
    layers.apply_specs(fresh, json.loads(json.dumps(layers.lowrank_specs(out))))
    fresh.load_state_dict(out.state_dict())
    fresh.eval()
    x = task.data.example_input(2)
    assert torch.allclose(fresh(x), out(x), atol=1e-5)


def test_out_of_reach_student_says_why(trained):
    model, task = trained
    with pytest.raises(CompressionError, match="block-internal"):
        LMA().compress(model, task, PARAMS, 0.95)


def test_chain_of_the_three_methods_saves_and_reloads(tmp_path):
    saving = pytest.importorskip("automc.compress.saving")
    from automc.compress.hos import HOS
    from automc.compress.lfb import LFB

    data = synthetic()
    task = Task(data, 0.5, TrainBudget(epochs=1, batch_size=32, lr=0.05))
    torch.manual_seed(0)
    model = build_model("resnet8", 4, width=8)
    x = data.example_input(2)
    s1 = LMA().compress(model, task, {"finetune_epochs_factor": 0.2}, 0.3)
    s2 = HOS().compress(s1, task, {"kd_finetune_epochs_factor": 0.2, "finetune_epochs_factor": 0.2}, 0.3)
    s3 = LFB().compress(s2, task, {"finetune_epochs_factor": 0.2}, 0.3)
    s4 = LMA().compress(s3, task, {"finetune_epochs_factor": 0.2, "lma_segments": 6}, 0.2)
    for i, s in enumerate((s1, s2, s3, s4)):
        assert abs(1 - count_params(s) / count_params([model, s1, s2, s3][i]) - [0.3, 0.3, 0.3, 0.2][i]) <= 0.03
        # pruning later never slices the (per-layer) activation parameters
        assert all(a.breakpoints.shape == (a.deltas.numel(),) and a.segments == 8
                   for a in s.modules() if isinstance(a, MultiSegmentActivation))
        saving.save_compressed(s, tmp_path / str(i), x)
        again = saving.load_compressed(tmp_path / str(i))
        assert torch.allclose(again(x), s.eval()(x), atol=1e-5)


@pytest.mark.parametrize("name", ["HOS", "LFB", "LMA"])
def test_methods_on_a_vgg(name):
    from automc.compress import METHODS

    data = synthetic(size=32)
    task = Task(data, 0.5, TrainBudget(epochs=2, batch_size=32, lr=0.05))
    torch.manual_seed(0)
    vgg = build_model("vgg11", 4, width=8)
    finetune(vgg, task, 5)
    assert evaluate(vgg, data).top1 > 0.9
    task = Task(data, 0.5, TrainBudget(epochs=2, batch_size=32, lr=0.01))
    out = METHODS[name]().compress(vgg, task, {}, 0.4)
    assert abs((1 - count_params(out) / count_params(vgg)) - 0.4) <= 0.03
    assert evaluate(out, data).top1 > 0.6


@pytest.mark.parametrize("name", ["NS", "SFP", "LeGR"])
def test_pruning_methods_after_lma_keep_the_activations_whole(trained, name):
    from automc.compress import METHODS

    model, task = trained
    student = LMA().compress(model, task, {**PARAMS, "finetune_epochs_factor": 0.2}, 0.2)
    params = {"NS": {"finetune_epochs_factor": 0.2}, "SFP": {"sfp_epochs_factor": 0.2},
              "LeGR": {"finetune_epochs_factor": 0.2, "ea_epochs_factor": 0.4}}[name]
    out = METHODS[name]().compress(student, task, params, 0.3)
    acts = [m for m in out.modules() if isinstance(m, MultiSegmentActivation)]
    assert len(acts) == 7 and all(a.params.weight.numel() == 2 * PARAMS["lma_segments"] for a in acts)
