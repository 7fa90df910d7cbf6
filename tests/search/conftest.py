"""Fixtures the search tests share: a small learnable synthetic task and the catalogue's search space."""

from __future__ import annotations

import pytest
import torch

from automc.compress.base import Task, TrainBudget
from automc.compress.data import synthetic
from automc.compress.models import build_model
from automc.compress.train import finetune
from automc.search.space import SearchSpace


@pytest.fixture(scope="module")
def data():
    """4 classes of 16x16 images (tint + stripe orientation + noise)."""
    return synthetic(num_classes=4, per_class=48, size=16, seed=0)


@pytest.fixture(scope="session")
def space():
    """Every method, the search's excluded ones too (the evaluator evaluates what it is given)."""
    return SearchSpace(exclude=())


@pytest.fixture(scope="module")
def base(data):
    """A ResNet-8 of width 4 trained on ``data`` (modules that need another base define their own)."""
    torch.manual_seed(0)
    model = build_model("resnet8", data.num_classes, width=4)
    finetune(model, Task(data, 0.4, TrainBudget(epochs=12, batch_size=32, lr=0.05)), 12)
    return model


@pytest.fixture
def task(data):
    """The search's task (a teacher-less task: the evaluator makes the base model its teacher)."""
    return Task(data, 0.4, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
