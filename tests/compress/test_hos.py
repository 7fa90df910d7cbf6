import pytest
import torch
from torch import nn

from automc.compress import hos


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(12, 3))


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 10, 10, generator=g) for _ in range(3)]


def test_moments_match_direct_computation():
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64) ** 3
    m = hos.Moments(4)
    m.update(x[:3])
    m.update(x[3:])
    flat = x.transpose(0, 1).reshape(4, -1)
    c = flat - flat.mean(1, keepdim=True)
    skew = (c**3).mean(1) / (c**2).mean(1) ** 1.5
    kurt = (c**4).mean(1) / (c**2).mean(1) ** 2 - 3
    assert torch.allclose(hos.local_scores(m, "skew_kur"), skew.abs() + kurt.abs(), rtol=1e-6)
    assert torch.allclose(hos.local_scores(m, "l1norm"), flat.abs().mean(1))


def test_response_is_taken_after_batchnorm():
    net = _net()
    targets = hos.response_modules(net, ["0", "3"])
    assert targets["0"] is net[1] and targets["3"] is net[3]


def test_scores_are_deterministic_and_differ_between_bases():
    net = _net()
    results = {}
    for local in hos.LOCAL_BASES:
        for glob in hos.GLOBAL_BASES:
            a = hos.hos_scores(net, _inputs(), ["0", "3"], local, glob)
            b = hos.hos_scores(net, _inputs(), ["0", "3"], local, glob)
            assert all(torch.equal(a[k], b[k]) for k in a)
            assert a["0"].shape == (8,) and a["3"].shape == (12,)
            results[local, glob] = torch.cat([a["0"], a["3"]])
    # local bases rank filters differently
    orders = {loc: tuple(results[loc, "P1"].argsort().tolist()) for loc in hos.LOCAL_BASES}
    assert len(set(orders.values())) == 3
    # global bases change cross-layer comparisons
    for loc in hos.LOCAL_BASES:
        assert not torch.allclose(results[loc, "P1"], results[loc, "P2"])
        p3 = results[loc, "P3"]
        assert sorted(p3[:8].tolist()) == pytest.approx([(i + 1) / 8 for i in range(8)])


def test_unknown_basis_raises():
    m = hos.Moments(2)
    m.update(torch.randn(2, 2, 3, 3))
    with pytest.raises(ValueError):
        hos.local_scores(m, "k5")
    with pytest.raises(ValueError):
        hos.global_scores({"a": torch.ones(2)}, "P9")


# -- the method -----------------------------------------------------------------------------------------------

import copy  # noqa: E402

from automc.compress import lowrank  # noqa: E402
from automc.compress.metrics import count_flops, count_params  # noqa: E402
from automc.compress.train import evaluate  # noqa: E402

PARAMS = {"hos_local_basis": "skew_kur", "hos_global_basis": "P3", "kd_finetune_epochs_factor": 1.0,
          "finetune_epochs_factor": 1.0, "aux_mse_factor": 3}


@pytest.mark.parametrize("ratio", [0.4, 0.7])
def test_hos_hits_ratio_prunes_and_factorises(trained, ratio):
    model, task = trained
    before = copy.deepcopy(model.state_dict())
    out = hos.HOS().compress(model, task, PARAMS, ratio)
    assert abs((1 - count_params(out) / count_params(model)) - ratio) <= 0.03
    x = task.data.example_input(2)
    assert count_flops(out, x) < count_flops(model, x)
    assert out(x).shape == model(x).shape
    assert out.layer1[0].bn1.num_features < model.layer1[0].bn1.num_features  # filters were pruned
    assert any(isinstance(m, lowrank.Tucker2Conv) for m in out.modules())
    assert evaluate(out, task.data).top1 > 0.6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hos_chains_after_low_rank(trained):
    model, task = trained
    once = hos.HOS().compress(model, task, {**PARAMS, "kd_finetune_epochs_factor": 0.0}, 0.4)
    twice = hos.HOS().compress(once, task, {**PARAMS, "kd_finetune_epochs_factor": 0.0}, 0.3)
    assert abs((1 - count_params(twice) / count_params(once)) - 0.3) <= 0.03


def test_feature_mse_compares_matching_stages(trained):
    model, _ = trained
    student = copy.deepcopy(model)
    aux = hos.FeatureMSE(student, model, hos.feature_points(model))
    x = torch.randn(2, 3, 16, 16)
    student(x)
    model(x)
    assert hos.feature_points(model) == ["layer1", "layer2", "layer3"]
    assert aux.loss() == 0
    with torch.no_grad():
        student.layer3[0].bn2.bias.add_(1.0)
    student(x)
    assert aux.loss() > 0
    aux.close()
