"""Tiny models and a learnable synthetic task shared by the compression tests (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from automc.compress.base import Task, TrainBudget
from automc.compress.data import synthetic
from automc.compress.models import build_model
from automc.compress.train import evaluate, finetune

torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared CPU


@pytest.fixture(scope="session")
def syn_data():
    """4 classes of 16x16 images (tint + stripe orientation + noise)."""
    return synthetic(num_classes=4, per_class=48, size=16, seed=0)


@pytest.fixture
def syn_task(syn_data):
    return Task(syn_data, 0.4, TrainBudget(epochs=2, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)


@pytest.fixture(scope="session")
def syn_model(syn_data):
    """ResNet-8 of width 4 trained on the synthetic task (do not modify: copy it)."""
    torch.manual_seed(0)
    model = build_model("resnet8", syn_data.num_classes, width=4)
    finetune(model, Task(syn_data, 0.4, TrainBudget(epochs=12, batch_size=32, lr=0.05)), 12)
    return model


@pytest.fixture(scope="module")
def trained():
    """ResNet-8 of width 8 trained above 90% on the default synthetic task, with a task at gamma 0.5."""
    data = synthetic()
    task = Task(data, 0.5, TrainBudget(epochs=3, batch_size=32, lr=0.05))
    torch.manual_seed(0)
    model = build_model("resnet8", 4, width=8)
    finetune(model, task, 8)
    assert evaluate(model, data).top1 > 0.9
    return model, task
