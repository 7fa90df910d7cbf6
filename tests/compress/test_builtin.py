"""The built-in digits task: data from scikit-learn, the small CNN, training from scratch, all six methods on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automc.compress import METHODS
from automc.compress.base import Task, TrainBudget
from automc.compress.builtin import digits, digits_arrays, train_base
from automc.compress.data import load_data
from automc.compress.metrics import count_params
from automc.compress.models import SmallCNN, build_model
from automc.compress.saving import describe, rebuild
from automc.compress.train import evaluate
from automc.errors import ValidationError


def test_digits_arrays_are_a_stratified_seeded_split():
    a = digits_arrays()
    assert a["x_train"].shape == (1257, 8, 8, 1) and a["x_test"].shape == (540, 8, 8, 1)
    assert a["x_train"].dtype == np.uint8 and a["x_train"].max() == 255 and a["x_train"].min() == 0
    assert set(np.unique(a["y_test"])) == set(range(10))
    share = np.bincount(a["y_test"], minlength=10) / np.bincount(np.concatenate([a["y_train"], a["y_test"]]))
    assert np.allclose(share, 0.3, atol=0.02)  # stratified
    again, other = digits_arrays(), digits_arrays(seed=1)
    assert all(np.array_equal(a[k], again[k]) for k in a)
    assert not np.array_equal(a["y_test"], other["y_test"])


def test_load_data_digits_is_reserved(tmp_path, monkeypatch):
    d = load_data("digits", val_fraction=0.1, device="cpu")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10 and not d.augment
    assert d.size("train") + d.size("val") == 1257 and d.size("test") == 540
    assert torch.equal(d.x["test"], digits(device="cpu").x["test"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()  # a real path of that name is read as data
    with pytest.raises(ValidationError, match="no dataset found"):
        load_data("digits")


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    data = digits(device="cpu")
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, width=8)
    log = train_base(model, data, 4, device="cpu")
    return model, data, log


def test_small_cnn_trains_from_scratch(trained):
    model, data, log = trained
    assert isinstance(model, SmallCNN) and model.automc_base["name"] == "smallcnn"
    assert log.steps > 0 and evaluate(model, data, "test").top1 > 0.9
    assert model(data.example_input(2)).shape == (2, 10)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_compresses_the_small_cnn(trained, name):
    model, data, _ = trained
    task = Task(data, 0.4, TrainBudget(epochs=0.5, batch_size=64, lr=0.02), seed=0)
    out = METHODS[name]().compress(model, task, {}, 0.4)
    assert abs(1 - count_params(out) / count_params(model) - 0.4) <= 0.03
    again = rebuild(describe(out))  # the evaluator's cache format
    again.load_state_dict(out.state_dict(), strict=True)
    x = data.example_input(4)
    assert torch.allclose(again.eval()(x), out.eval()(x), atol=1e-5)
    assert evaluate(out, data, "test").top1 > 0.3
