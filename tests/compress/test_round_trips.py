"""The step path does not wait on the device: the fine-tune loop reads no tensor back per step (its divergence check
runs on the device), and evaluation/measurement give exactly the numbers of a plain per-batch loop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from automc.compress.base import Task, TrainBudget
from automc.compress.models import build_model
from automc.compress.scheme import measure
from automc.compress.train import DIVERGENCE_CHECK_EVERY, Hooks, evaluate, finetune, predict
from automc.errors import CompressionError


class HostReads(TorchDispatchMode):
    """Counts tensor values read back by the host (``.item()``, ``float(t)``, ``bool(t)``: on a GPU each one waits
    for the device to finish everything queued)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_finetune_reads_back_rarely(syn_data):
    task = Task(syn_data, 0.4, TrainBudget(epochs=1, batch_size=8, lr=0.01), torch.device("cpu"), seed=0)
    model = build_model("resnet8", 4, width=4)
    steps = DIVERGENCE_CHECK_EVERY + DIVERGENCE_CHECK_EVERY // 2
    with HostReads() as mode:
        log = finetune(model, task, 0.0, steps=steps)
    assert log.steps == steps
    # one finiteness read per DIVERGENCE_CHECK_EVERY steps and at the end, plus the last loss for the log
    assert mode.reads <= steps // DIVERGENCE_CHECK_EVERY + 2
    assert log.last_loss == log.last_loss  # the log still carries a real loss (not NaN)


def test_finetune_still_stops_on_a_non_finite_loss(syn_data):
    task = Task(syn_data, 0.4, TrainBudget(epochs=1, batch_size=8, lr=0.01), torch.device("cpu"), seed=0)
    calls = {"n": 0}

    def nan_once(_model):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 3 else torch.zeros(())

    with pytest.raises(CompressionError, match="diverged"):
        finetune(build_model("resnet8", 4, width=4), task, 0.0, steps=10, hooks=Hooks(regularize=nan_once))


def _plain_logits(model, data, split, batch_size=500):
    """A plain loop: normalise the split by hand, run the model batch by batch, bring each batch's logits back."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x = (data.x[split].float() / 255.0 - mean) / std
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).float().cpu() for i in range(0, x.shape[0], batch_size)])


@pytest.mark.parametrize("batch_size", [500, 7])
def test_evaluate_and_measure_give_the_plain_loops_numbers(syn_model, syn_task, batch_size):
    model, data = copy.deepcopy(syn_model), syn_task.data
    for split in ("val", "test"):
        ref = _plain_logits(model, data, split, batch_size)
        assert torch.equal(predict(model, data, split, batch_size=batch_size), ref)
        correct = int((ref.argmax(1) == data.y[split]).sum())
        acc = evaluate(model, data, split, batch_size=batch_size)
        assert (acc.correct, acc.total) == (correct, data.size(split))
    m = measure(model, syn_task)
    val = int((_plain_logits(model, data, "val").argmax(1) == data.y["val"]).sum())
    test = int((_plain_logits(model, data, "test").argmax(1) == data.y["test"]).sum())
    assert (m.val_correct, m.val_total, m.test_correct, m.test_total) == (val, data.size("val"), test,
                                                                          data.size("test"))
    assert m.acc_val == val / data.size("val") and m.acc_test == test / data.size("test")
