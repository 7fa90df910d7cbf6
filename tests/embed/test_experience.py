import math

import pytest
import torch

from automc.embed import FEATURES, NNExp, TriplesFactory, store_experiences
from automc.embed.experience import pool_strategies, task_feature_vector


def test_experiences_map_to_strategies_and_methods(planted_store, planted):
    _, strategies = planted
    f = TriplesFactory.from_store(planted_store)
    exps, info = store_experiences(planted_store, f)
    assert info == {"used_strategy": 16, "used_method": 1, "skipped_not_a_method": 1}
    assert len(exps) == 17 and exps.features.shape == (17, len(FEATURES)) and exps.targets.shape == (17, 3)
    ids = f.entity_ids("Strategy")
    strategy_level = exps.levels.index("strategy")
    sid = next(k for k, v in ids.items() if v == exps.bags[strategy_level][0])
    assert len(exps.bags[strategy_level]) == 1 and sid in strategies[exps.methods[strategy_level]]
    # the method-level experience (C with c1=2) trains through the 6 C strategies having c1=2
    bag = exps.bags[exps.levels.index("method")]
    names = {v: k for k, v in ids.items()}
    assert sorted(names[e] for e in bag) == sorted(s for s in strategies["C"] if "c1=2," in s)
    # AR, PR, FR known for the method-level one; FR unknown (NaN) for the strategy-level ones
    assert not torch.isnan(exps.targets[exps.levels.index("method")]).any()
    assert torch.isnan(exps.targets[strategy_level, 2])


def test_task_features_are_logged_and_unknowns_are_nan():
    row = {"num_classes": 10, "num_images": 60000, "image_size": 32, "image_channels": 3, "base_accuracy": None,
           "params": 1e6, "flops": None, "target_pr": None, "pr": 0.4}
    v = task_feature_vector(row, {"reduction_ratio": 0.5})
    assert v[0] == pytest.approx(math.log(10)) and v[3] == pytest.approx(math.log(6000))
    assert math.isnan(v[4]) and math.isnan(v[6]) and v[5] == pytest.approx(math.log(1e6))
    assert v[-1] == 0.5  # the reported reduction stands in for the unknown target


def test_nn_exp_loss_is_masked_and_its_gradient_reaches_only_bag_strategies(planted_store, one_thread):
    f = TriplesFactory.from_store(planted_store)
    exps, _ = store_experiences(planted_store, f)
    emb = torch.nn.Parameter(torch.randn(f.num_entities, 8))
    net = NNExp(8, dropout=0.0)
    net.fit_scaling(exps)
    loss = net.loss(pool_strategies(emb, exps), exps.features, exps.targets)
    assert torch.isfinite(loss)
    loss.backward()
    touched = set(torch.nonzero(emb.grad.abs().sum(1)).view(-1).tolist())
    assert touched == {e for bag in exps.bags for e in bag}
    # an experience whose targets are all unknown contributes nothing
    targets = exps.targets.clone()
    targets[0] = float("nan")
    with torch.no_grad():
        rest = net.loss(pool_strategies(emb, exps.subset(range(1, 17))), exps.features[1:], exps.targets[1:])
        full = net.loss(pool_strategies(emb, exps), exps.features, targets)
    assert torch.allclose(full, rest)


def test_nn_exp_learns_the_planted_accuracy_trend(planted_store, one_thread):
    f = TriplesFactory.from_store(planted_store)
    exps, _ = store_experiences(planted_store, f)
    torch.manual_seed(0)
    emb = torch.nn.Parameter(torch.randn(f.num_entities, 8) * 0.3)
    net = NNExp(8, dropout=0.0, hidden=16)
    net.fit_scaling(exps)
    opt = torch.optim.Adam([*net.parameters(), emb], lr=0.02)
    first = None
    for _ in range(200):
        opt.zero_grad()
        loss = net.loss(pool_strategies(emb, exps), exps.features, exps.targets)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    pred = net.predict(pool_strategies(emb, exps), exps.features)[:, 0]
    assert loss.item() < 0.1 * first
    assert (pred - exps.targets[:, 0]).abs().mean() < 0.02
