"""Training compute in epoch-equivalents (``compress.compute``), checked on hand-computed cases with real training."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from automc.compress import METHODS
from automc.compress.base import Task, TrainBudget
from automc.compress.compute import charge, metered
from automc.compress.data import from_arrays
from automc.compress.layers import recalibrate_bn, train_inputs
from automc.compress.models import build_model
from automc.compress.train import evaluate, finetune

torch.set_num_threads(1)

N, B = 128, 32  # training images, batch size


def _data(fraction: float = 1.0):
    """4 classes, 128 training images (32 a class), 64 test images split into validation and test."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (N + 64, 16, 16, 3), dtype=np.uint8)
    y = np.tile(np.arange(4), (N + 64) // 4).astype(np.int64)
    return from_arrays(x[:N], y[:N], x[N:], y[N:], val_from="test", fraction=fraction, seed=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    return _data()


def _task(data, **kw) -> Task:
    return Task(data, 0.4, TrainBudget(epochs=1.0, batch_size=B, lr=0.01), torch.device("cpu"), seed=0, **kw)


def test_k_batches_through_finetune_are_k_b_over_n_epochs(data):
    model = build_model("resnet8", 4, width=4)
    with metered(data) as m:
        finetune(model, _task(data), 0.0, steps=3)
    assert (m.trained, m.forward) == (3 * B, 0)
    assert m.epochs == pytest.approx(3 * B / N)  # 0.75


def test_a_teacher_adds_a_third_per_image(data):
    model, teacher = build_model("resnet8", 4, width=4), build_model("resnet8", 4, width=4)
    with metered(data) as m:
        finetune(model, _task(data), 0.0, steps=3, teacher=teacher)
    assert (m.trained, m.forward) == (3 * B, 3 * B)
    assert m.epochs == pytest.approx(3 * B / N + 3 * B / 3 / N)  # 0.75 + 0.25 = 1.0


def test_evaluation_and_bn_recalibration_count_a_third_per_image(data):
    model = build_model("resnet8", 4, width=4)
    with metered(data) as m:
        evaluate(model, data, "val")
        recalibrate_bn(model, train_inputs(_task(data), batches=2))
    assert (m.trained, m.forward) == (0, data.size("val") + 2 * B)
    assert m.epochs == pytest.approx((data.size("val") + 2 * B) / 3 / N)


def test_an_epoch_of_a_training_fraction_counts_its_share():
    half = _data(0.5)
    assert half.size("train") == N // 2
    with metered(half) as m:
        finetune(build_model("resnet8", 4, width=4), _task(half), 1.0)  # one epoch of the 64-image sample
    assert m.epochs == pytest.approx(0.5)


def test_a_method_step_charges_its_training_and_its_teacher(data):
    """LFB: BN recalibration on the training batches, the fine-tune, its auxiliary teacher's forward per image."""
    model = build_model("resnet8", 4, width=4)
    task = _task(data)
    with metered(data) as m:
        METHODS["LFB"]().compress(copy.deepcopy(model), task, {"finetune_epochs_factor": 0.5, "aux_loss": "CE",
                                                              "aux_loss_factor": 1.0}, 0.3)
    steps = 2  # 0.5 epoch of 4 batches
    assert m.trained == steps * B
    assert m.forward == N + steps * B  # recalibration over all 4 training batches, the teacher on each trained one


def test_meters_nest_and_stay_in_their_thread(data):
    seen = {}

    def other():
        with metered(data) as m:
            charge(N, backward=True)
        seen["other"] = m.epochs

    with metered(data) as outer:
        with metered(data) as inner:
            charge(B, backward=True)
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert inner.epochs == pytest.approx(B / N) and outer.epochs == pytest.approx(B / N)
    assert seen["other"] == pytest.approx(1.0)
    charge(N, backward=True)  # outside any meter: nothing to count, no error
