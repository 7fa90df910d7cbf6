import pytest
import torch

from automc.compress.metrics import count_params
from automc.compress.models import build_model, load_weights, read_state_dict
from automc.errors import ValidationError


@pytest.mark.parametrize(("name", "params"), [("resnet20", 269_722), ("resnet56", 853_018),
                                              ("resnet32", 464_154), ("vgg16", 14_724_042)])
def test_known_parameter_counts(name, params):
    assert count_params(build_model(name, 10)) == params


@pytest.mark.parametrize("name", ["resnet8", "resnet44", "resnet110", "resnet164", "vgg11", "vgg13", "vgg19"])
def test_forward_shapes(name):
    model = build_model(name, 7, width=4 if name.startswith("resnet") else 8).eval()
    size = 16 if name.startswith("resnet") else 32  # VGG pools five times
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_resnet164_uses_bottlenecks():
    model = build_model("resnet164", 10, width=4)
    assert hasattr(model.layer1[0], "conv3") and len(model.layer1) == 18


def test_unknown_model_raises():
    with pytest.raises(ValidationError, match="unknown model"):
        build_model("notanet", 10)


def test_weights_round_trip_and_misfit(tmp_path):
    a = build_model("resnet8", 10, width=4)
    path = tmp_path / "w.th"
    torch.save({"best_prec1": 1.0, "state_dict": {"module." + k: v for k, v in a.state_dict().items()}}, path)
    b = load_weights(build_model("resnet8", 10, width=4), path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValidationError, match="do not fit") as e:
        load_weights(build_model("resnet8", 10, width=8), path)
    assert str(path) in str(e.value)


def test_unreadable_weights(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValidationError, match="cannot read weights"):
        read_state_dict(bad)
    with pytest.raises(ValidationError, match="not found"):
        read_state_dict(tmp_path / "missing.th")


@pytest.mark.slow
def test_pretrained_resnet20_scores_on_shared_subset(shared_dir):
    from automc.compress.data import load_data
    from automc.compress.train import evaluate

    data = load_data(shared_dir / "datasets" / "cifar10-subset.npz",
                     val_data=shared_dir / "datasets" / "cifar10-val-jpeg.npz", device="cpu")  # test: all 1017
    model = load_weights(build_model("resnet20", 10), shared_dir / "models" / "resnet20-cifar10.th")
    acc = evaluate(model, data, "test")
    assert acc.total == 1017
    assert acc.top1 == pytest.approx(0.916, abs=0.005)
