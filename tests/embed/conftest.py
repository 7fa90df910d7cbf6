"""A small real LadybugDB knowledge graph with a planted structure, and a few experiences on it.

Three methods A, B, C; each has two hyperparameters of its own and shares ``ft``; strategies are the full grids
(24 per method). So a strategy's settings reveal its method: holding out HAS_METHOD triples leaves a structure
link prediction can recover.
"""

from __future__ import annotations

import itertools
import json

import pytest

from automc.kb import GraphBatch, TaskFeatures, open_store
from automc.kb.store import add_setting, add_strategy

GRIDS = {
    "A": {"a1": [1, 2, 3, 4], "a2": ["x", "y", "z"], "ft": [0.2, 0.4]},
    "B": {"b1": [1, 2, 3, 4], "b2": ["p", "q", "r"], "ft": [0.2, 0.4]},
    "C": {"c1": [1, 2, 3, 4], "c2": ["u", "v", "w"], "ft": [0.2, 0.4]},
}
TECHNIQUES = {"A": ["pruning", "fine_tuning"], "B": ["pruning", "distillation"], "C": ["low_rank", "fine_tuning"]}


def planted_batch() -> tuple[GraphBatch, dict[str, list[str]]]:
    """The planted graph; also returns method -> strategy ids."""
    b = GraphBatch()
    strategies: dict[str, list[str]] = {}
    for t in sorted({t for ts in TECHNIQUES.values() for t in ts}):
        b.node("Technique", name=t, description=t)
    for m, grid in GRIDS.items():
        b.node("Method", name=m, title=m, reference="")
        for t in TECHNIQUES[m]:
            b.rel("USES_TECHNIQUE", m, t)
        for hp, values in grid.items():
            b.node("Hyperparameter", name=hp, description=hp, type="float", domain="[]")
            b.rel("HAS_HYPERPARAMETER", m, hp)
            for v in values:
                add_setting(b, hp, v, in_catalog=True)
        keys = list(grid)
        strategies[m] = [add_strategy(b, m, tuple(zip(keys, combo, strict=True)), in_catalog=True)
                         for combo in itertools.product(*(grid[k] for k in keys))]
    return b, strategies


TASK = TaskFeatures(model="resnet20", dataset="cifar10", num_classes=10, image_size=32, image_channels=3,
                    num_images=60000, base_accuracy=0.92, params=270000.0, flops=41e6)


def experience_batch(strategies: dict[str, list[str]]) -> GraphBatch:
    """Strategy-level experiences whose AR grows with ``a1``/``b1``; one method-level one; one AutoML baseline."""
    b = GraphBatch()
    task = b.task(TASK)
    n = 0
    for m in ("A", "B"):
        for sid in strategies[m][::3]:
            level = int(sid.split("1=")[1][0])
            ar = -0.01 * level if m == "A" else -0.05 * level
            eid = f"exp{n}"
            n += 1
            b.node("Experience", id=eid, source="test", level="strategy", algorithm=m,
                   settings=json.dumps({"reduction_ratio": 0.5}), target_pr=0.5, ar=ar, pr=0.5)
            b.rel("EXP_ON_TASK", eid, task)
            b.rel("EXP_OF_METHOD", eid, m)
            b.rel("EXP_OF_STRATEGY", eid, sid)
    b.node("Experience", id="method-c", source="test", level="method", algorithm="C",
           settings=json.dumps({"c1": 2}), target_pr=0.4, ar=-0.02, pr=0.41, fr=0.3)
    b.rel("EXP_ON_TASK", "method-c", task)
    b.rel("EXP_OF_METHOD", "method-c", "C")
    b.node("Experience", id="automl", source="test", level="algorithm", algorithm="RL", settings="{}",
           target_pr=0.4, ar=0.01, pr=0.4)
    b.rel("EXP_ON_TASK", "automl", task)
    return b


@pytest.fixture
def planted(tmp_path):
    """(store path URI, method -> strategy ids): the planted graph with experiences, in a real LadybugDB store."""
    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    batch, strategies = planted_batch()
    with open_store(uri) as s:
        s.write(batch)
        s.write(experience_batch(strategies))
    return uri, strategies


@pytest.fixture
def planted_store(planted):
    uri, _ = planted
    s = open_store(uri)
    yield s
    s.close()


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is faster, and much faster on a shared, busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
