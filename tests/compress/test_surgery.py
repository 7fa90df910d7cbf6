import pytest
import torch

from automc.compress.criteria import CRITERIA
from automc.compress.metrics import count_params
from automc.compress.models import build_model
from automc.compress.surgery import analyse, prunable_layers, prune_by_scores, prune_channels, replay
from automc.errors import CompressionError, ValidationError

X16 = torch.randn(1, 3, 16, 16)
X32 = torch.randn(1, 3, 32, 32)


def test_only_block_internal_convs_are_prunable():
    layers = prunable_layers(build_model("resnet20", 10), X32)
    assert list(layers) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert all(lay.bn is not None for lay in layers.values())
    bottleneck = prunable_layers(build_model("resnet164", 10, width=4), X16)
    assert "layer1.0.conv2" in bottleneck and "layer1.0.conv3" not in bottleneck
    vgg = prunable_layers(build_model("vgg11", 10, width=8), X32)
    assert len(vgg) == 8  # every conv of a plain chain


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "resnet164"])
def test_parameter_model_is_exact(name):
    model = build_model(name, 10, width=8 if name == "vgg11" else 4)
    x = X32 if name == "vgg11" else X16
    an = analyse(model, x)
    removed = {n: lay.channels // 2 for n, lay in an.layers.items()}
    plan = {n: list(range(k)) for n, k in removed.items()}
    pruned, record = prune_channels(model, plan, x)
    assert count_params(pruned) == an.params_after(removed)
    assert pruned(x).shape == (1, 10)
    assert count_params(model) == an.total_params  # the input is not modified
    assert [n for n, _ in record] == list(plan)


def test_plan_by_module_and_record_replays():
    model = build_model("resnet8", 10, width=4)
    conv = model.layer2[0].conv1
    pruned, record = prune_channels(model, {conv: [0, 3], "layer3.0.conv1": [1]}, X16)
    assert pruned.layer2[0].conv1.out_channels == 6 and pruned.layer2[0].conv2.in_channels == 6
    again = replay(build_model("resnet8", 10, width=4), record, X16)
    assert [p.shape for p in again.parameters()] == [p.shape for p in pruned.parameters()]


def test_bad_plans_raise():
    model = build_model("resnet8", 10, width=4)
    with pytest.raises(ValidationError, match="not a prunable"):
        prune_channels(model, {"layer1.0.conv2": [0]}, X16)  # residual stream
    with pytest.raises(ValidationError, match="out of range"):
        prune_channels(model, {"layer1.0.conv1": [9]}, X16)
    with pytest.raises(ValidationError, match="all 4 channels"):
        prune_channels(model, {"layer1.0.conv1": [0, 1, 2, 3]}, X16)


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_prune_by_scores_hits_target(ratio, criterion):
    model = build_model("resnet20", 10)
    scores = CRITERIA[criterion](prunable_layers(model, X32))
    pruned, record = prune_by_scores(model, scores, ratio, 0.95, X32)
    assert abs(1 - count_params(pruned) / count_params(model) - ratio) <= 0.03
    for name, idx in record:  # never empties a layer, respects the cap
        assert len(idx) <= int(0.95 * model.get_submodule(name).out_channels)


def test_max_layer_ratio_is_respected_and_unreachable_target_says_why():
    model = build_model("resnet20", 10)
    scores = CRITERIA["l2_weight"](prunable_layers(model, X32))
    pruned, record = prune_by_scores(model, scores, 0.3, 0.5, X32)
    assert all(len(idx) <= model.get_submodule(n).out_channels // 2 for n, idx in record)
    with pytest.raises(CompressionError, match="max_layer_prune_ratio=0.5"):
        prune_by_scores(model, scores, 0.7, 0.5, X32)
