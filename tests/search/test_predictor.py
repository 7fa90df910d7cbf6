"""F_mo: inputs for the whole catalogue, packing keeps rows aligned, it learns a planted relation, determinism,
it predicts AR only, and it trains until its held-out loss stops improving."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from automc.catalog import load_catalog
from automc.search._base import StepRecord
from automc.search.predictor import Predictor, strategy_features

torch.set_num_threads(1)


class CatalogSpace:
    """The part of the SearchSpace API the predictor reads, over the catalogue's strategies (or a subset)."""

    def __init__(self, methods: tuple[str, ...] | None = None) -> None:
        self.catalog = load_catalog()
        strategies = [s for s in self.catalog.strategies() if methods is None or s.method in methods]
        self.ids = tuple(s.id for s in strategies)
        self._by_id = {s.id: s for s in strategies}

    def strategy(self, sid: str):
        return self._by_id[sid]


@pytest.fixture(scope="module")
def small_space() -> CatalogSpace:
    return CatalogSpace(("NS", "SFP", "LFB"))


PR_OF = {"NS": 0.6, "SFP": 0.3, "LFB": 0.8}
TASK = (1.0, 2.0, 3.0, 4.0, 0.9, 12.0, 15.0, 0.4)


def planted(space: CatalogSpace, n: int, seed: int) -> list[StepRecord]:
    """Steps whose PR depends on method x target_ratio_factor and whose AR on the step count and the method."""
    rng = np.random.default_rng(seed)
    ids = space.ids
    out = []
    for _ in range(n):
        parent = tuple(ids[i] for i in rng.integers(0, len(ids), size=rng.integers(0, 4)))
        sid = ids[rng.integers(len(ids))]
        s = space.strategy(sid)
        trf = float(s.params["target_ratio_factor"])
        step_pr = PR_OF[s.method] * trf
        step_ar = -0.02 * (1 + len(parent)) - 0.1 * step_pr
        out.append(StepRecord(parent, sid, "t", TASK, step_ar, step_pr))
    return out


def test_features_cover_the_whole_catalogue():
    catalog = load_catalog()
    strategies = catalog.strategies()
    started = time.perf_counter()
    x = strategy_features(strategies, catalog)
    assert x.shape[0] == len(strategies) == 9042
    assert time.perf_counter() - started < 5
    assert (x >= 0).all() and (x <= 1).all()
    assert len({r.tobytes() for r in x}) == len(strategies)  # every strategy gets its own vector


def test_embeddings_are_concatenated(small_space):
    emb = {sid: [float(i), 1.0, -1.0] for i, sid in enumerate(small_space.ids)}
    p = Predictor(small_space, emb, task_dim=len(TASK), seed=0)
    q = Predictor(small_space, {}, task_dim=len(TASK), seed=0)
    assert p.strategy_dim == q.strategy_dim + 3


def test_mixed_lengths_stay_aligned(small_space):
    p = Predictor(small_space, {}, task_dim=len(TASK), seed=1)
    p.fit(planted(small_space, 64, 0), max_steps=2, patience=None)
    ids = small_space.ids
    parents = [(), (ids[3], ids[50], ids[7]), (ids[9],), (ids[1], ids[2]), (ids[4], ids[5], ids[6], ids[8])]
    cands = [ids[10], ids[11], ids[12], ids[13], ids[14]]
    batched = p.predict(parents, cands, TASK)
    alone = np.concatenate([p.predict([a], [c], TASK) for a, c in zip(parents, cands, strict=True)])
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    # and in reverse order: the row order of the answer follows the input, not the lengths
    np.testing.assert_allclose(p.predict(parents[::-1], cands[::-1], TASK), batched[::-1], rtol=1e-5, atol=1e-6)
    # the parent matters (a broken packer that reads padding would make long parents look alike)
    assert not np.allclose(batched[1], p.predict([()], [cands[1]], TASK)[0])


@pytest.mark.slow  # ~3 s alone, ~10 s on a busy 2-core machine
def test_learns_a_planted_relation(small_space):
    train, test = planted(small_space, 600, 1), planted(small_space, 300, 2)
    p = Predictor(small_space, {}, task_dim=len(TASK), seed=0)
    loss = p.fit(train, max_steps=600, patience=50)
    pred = p.predict([r.parent for r in test], [r.strategy for r in test], TASK)
    y = np.array([r.step_ar for r in test])
    mean = np.mean([r.step_ar for r in train])
    err, base = ((pred - y) ** 2).mean(), ((mean - y) ** 2).mean()
    assert np.isfinite(loss)
    assert err < 0.1 * base, (err, base)
    assert p.trained_on == {"t": len({(r.parent, r.strategy) for r in train})}


def test_deterministic_and_state_round_trips(small_space):
    data = planted(small_space, 200, 3)
    a, b = (Predictor(small_space, {}, task_dim=len(TASK), seed=7) for _ in range(2))
    a.fit(data, max_steps=30, patience=5)
    b.fit(data, max_steps=30, patience=5)
    parents, cands = [r.parent for r in data[:20]], [r.strategy for r in data[:20]]
    np.testing.assert_array_equal(a.predict(parents, cands, TASK), b.predict(parents, cands, TASK))
    c = Predictor(small_space, {}, task_dim=len(TASK), seed=99)
    c.load_state_dict(json.loads(json.dumps(a.state_dict())))
    np.testing.assert_allclose(c.predict(parents, cands, TASK), a.predict(parents, cands, TASK), rtol=1e-6)
    assert c.trained_on == a.trained_on


def test_steps_outside_the_space_get_vectors_and_unknown_methods_are_skipped(small_space):
    p = Predictor(small_space, {}, task_dim=len(TASK), seed=0)
    outside = "LeGR(finetune_epochs_factor=0.2,target_ratio_factor=0.5,max_layer_prune_ratio=0.7," \
              "ea_epochs_factor=0.4,ea_finetune_epochs_factor=0.01,filter_criterion=l1_weight)"
    good = StepRecord((), outside, "other", TASK, -0.01, 0.3)
    bad = StepRecord((), "NOPE(x=1)", "other", TASK, -0.01, 0.3)
    assert p.knows(good) and not p.knows(bad)
    p.fit([good, bad], max_steps=1)
    assert p.trained_on == {"other": 1}
    assert p.predict([()], [outside], TASK).shape == (1,)


def test_scoring_a_few_hundred_candidates_is_fast():
    space = CatalogSpace()
    p = Predictor(space, {}, task_dim=len(TASK), seed=0)
    rng = np.random.default_rng(0)
    parents = [tuple(space.ids[i] for i in rng.integers(0, len(space.ids), size=k)) for k in rng.integers(0, 5, 300)]
    cands = [space.ids[i] for i in rng.integers(0, len(space.ids), 300)]
    started = time.perf_counter()
    out = p.predict(parents, cands, TASK)
    assert out.shape == (300,) and np.isfinite(out).all()
    assert time.perf_counter() - started < 2.0


def test_only_the_accuracy_change_is_learnt(small_space):
    """PR is computed from the scheme, not predicted: a step without a usable PR still teaches F_mo its AR, and
    the answer is one AR per row."""
    data = planted(small_space, 40, 4)
    blind = [StepRecord(r.parent, r.strategy, r.task, r.features, r.step_ar, float("nan")) for r in data]
    p = Predictor(small_space, {}, task_dim=len(TASK), seed=0)
    assert math.isfinite(p.fit(blind, max_steps=5))
    assert p.trained_on == {"t": len({(r.parent, r.strategy) for r in data})}
    assert p.predict([r.parent for r in data[:7]], [r.strategy for r in data[:7]], TASK).shape == (7,)
    assert p.model.mlp[-1].out_features == 1  # no PR head


def test_training_stops_on_its_own_below_the_old_fixed_schedule(small_space):
    """On an easy planted target F_mo stops by patience long before the step cap, with a lower loss than the old
    10 epochs of batches of 64 reached from the same start."""
    data = planted(small_space, 120, 5)
    new = Predictor(small_space, {}, task_dim=len(TASK), seed=3)
    loss = new.fit(data, max_steps=2000, patience=30)
    assert new.last_fit["stopped"] == "patience" and new.last_fit["steps"] < 2000
    assert new.last_fit["held_out"] == 24 and new.last_fit["held_out_loss"] is not None
    old = Predictor(small_space, {}, task_dim=len(TASK), seed=3, batch_size=64)
    old_loss = old.fit(data, max_steps=10 * math.ceil(len(data) / 64), patience=None)  # the old 10 epochs
    assert old.last_fit["stopped"] == "fixed" and old.last_fit["steps"] == 20
    assert loss < 0.5 * old_loss, (loss, old_loss)
