"""Reuse across tasks on a real LadybugDB: other tasks' steps, transfer from similar tasks, embedding refresh."""

from __future__ import annotations

import math
import tomllib

import pytest

from automc.catalog import Catalog, Scheme, load_catalog
from automc.embed.train import EmbedConfig
from automc.kb import open_store
from automc.kb.records import GraphBatch, TaskFeatures
from automc.search._base import Context, History, Observation, round_rng
from automc.search.progressive import ProgressiveStrategy
from automc.search.reuse import ensure_embeddings, load_prior, similar_tasks, task_vector
from automc.search.space import SearchSpace

A = TaskFeatures("resnet8", "synthetic-a", 4, 16, 3, 400, 0.90, 1234.0, 5678.0)
B = TaskFeatures("resnet8", "synthetic-b", 4, 16, 3, 420, 0.88, 1234.0, 5678.0)
FAR = TaskFeatures("resnet56", "imagenet-ish", 1000, 224, 3, 1_000_000, 0.70, 8.5e5, 1.2e8)


@pytest.fixture
def store(tmp_path):
    s = open_store(f"ladybug://{tmp_path / 'kb.lbug'}")
    yield s
    s.close()


def strategies(n: int):
    """NS strategies that reach the target alone (share 1), so one-step schemes of them are feasible."""
    return [s for s in load_catalog().strategies("NS") if s.params["target_ratio_factor"] == 1.0][:n]


def evaluate(store, task, steps, run, *, acc, params, pr, step=None, fidelity="search", target_pr=0.4, ok=True):
    scheme = Scheme(tuple(steps))
    eid = store.start_evaluation(task, scheme, target_pr=target_pr, search_run=run,
                                 extra={"fidelity": fidelity, "round": 0})
    if not ok:
        store.fail_evaluation(eid, "boom")
        return eid
    record = {"val_accuracy": acc, "params": params, "pr": pr, "fidelity": fidelity}
    if step is not None:
        record.update(step_ar=step[0], step_pr=step[1])
    store.finish_evaluation(eid, record)
    return eid


def fill(store):
    s1, s2, s3 = strategies(3)
    evaluate(store, A, [s1], "run-a", acc=0.85, params=600.0, pr=0.5, step=(-0.0556, 0.5))
    # no stored step effect: taken from the parent's evaluation in the same run
    evaluate(store, A, [s1, s2], "run-a", acc=0.80, params=300.0, pr=0.75, step=None)
    evaluate(store, A, [s2], "run-a", acc=0.89, params=1100.0, pr=0.1, step=(-0.011, 0.1))
    evaluate(store, A, [s3], "run-a", acc=0.5, params=10.0, pr=0.99, ok=False)  # FAIL: never read
    evaluate(store, A, [s1, s2], "run-a-final", acc=0.86, params=300.0, pr=0.75, step=(0.5, 0.5), fidelity="final")
    evaluate(store, B, [s3], "run-b", acc=0.70, params=500.0, pr=0.6, step=(-0.2, 0.6))
    return s1, s2, s3


def test_prior_reads_other_tasks_steps_only(store):
    s1, s2, s3 = fill(store)
    prior = load_prior(store, B.id)
    assert {r.task for r in prior.records} == {A.id}
    assert prior.tasks == 1 and prior.evaluations == 3  # A's three complete search-fidelity evaluations
    steps = {(r.parent, r.strategy): r for r in prior.records}
    assert set(steps) == {((), s1.id), ((s1.id,), s2.id), ((), s2.id)}
    computed = steps[((s1.id,), s2.id)]
    assert computed.step_ar == pytest.approx(0.80 / 0.85 - 1) and computed.step_pr == pytest.approx(0.5)
    assert steps[((), s1.id)].step_pr == pytest.approx(0.5)
    # features are A's, with the run's target and never the reached PR
    assert steps[((), s1.id)].features[:7] == pytest.approx(task_vector(A, 0.4)[:7])
    assert steps[((), s1.id)].features[7] == pytest.approx(0.4)
    # transfer: A's front above its target (s1 and s1>s2; s2 alone is below 0.4)
    assert set(prior.transfer) == {(s1.id,), (s1.id, s2.id)} and prior.similar == (A.id,)
    other = load_prior(store, A.id)
    assert {r.task for r in other.records} == {B.id} and other.transfer == ((s3.id,),)
    assert other.to_dict() == {"evaluations": 1, "tasks": 1}


def test_transfer_comes_from_the_most_similar_task(store):
    s1, _, s3 = fill(store)
    evaluate(store, FAR, [s3], "run-far", acc=0.6, params=1e5, pr=0.88, step=(-0.1, 0.88))
    new = TaskFeatures("resnet8", "synthetic-c", 4, 16, 3, 401, 0.90, 1234.0, 5678.0)
    prior = load_prior(store, new.id, task=new, k=1)
    assert prior.similar == (A.id,) and prior.transfer[0] in {(s1.id,), (s1.id, strategies(2)[1].id)}
    assert prior.tasks == 3
    far_first = load_prior(store, "x", task=TaskFeatures("resnet56", "imagenet-ish", 900, 224, 3, 900_000, 0.7,
                                                         8e5, 1.1e8), k=1)
    assert far_first.similar == (FAR.id,) and far_first.transfer == ((s3.id,),)
    assert similar_tasks(task_vector(A, None), {}, 2) == []


def test_a_search_reads_the_prior(store):
    fill(store)
    prior = load_prior(store, B.id)

    ctx = Context(space=SearchSpace(max_length=2), target_pr=0.4, task=B, task_vector=task_vector(B, 0.4),
                  prior=prior.records, transfer=prior.transfer, options={"warm_steps": 5, "candidates": 20})
    base = History(Observation((), "COMPLETE", 0.9, 0.0, params=1000.0))
    with_reuse = ProgressiveStrategy(ctx)
    assert with_reuse.propose(base, 3, round_rng(0, 0))[0] in prior.transfer
    assert with_reuse.trained_on == {A.id: 3}
    no_reuse = ProgressiveStrategy(Context(space=SearchSpace(max_length=2), target_pr=0.4, task=B,
                                           task_vector=task_vector(B, 0.4), options={"candidates": 20}))
    assert no_reuse.propose(base, 3, round_rng(0, 0))
    assert no_reuse.trained_on == {}


TINY = """
[hyperparameters.target_ratio_factor]
description = "d"
type = "float"
domain = [0.0, 1.0]
[hyperparameters.finetune_epochs_factor]
description = "d"
type = "float"
domain = [0.0, 10.0]
[techniques]
pruning = "pruning"
[methods.NS]
title = "t"
reference = "r"
techniques = ["pruning"]
[methods.NS.grid]
target_ratio_factor = [0.1, 0.5, 1.0]
finetune_epochs_factor = [0.2, 0.4]
"""


def test_embeddings_refresh_only_when_knowledge_changed(store):
    emb, info = ensure_embeddings(store, refresh=True)  # an empty store: nothing to fit, no error
    assert emb == {} and not info["refreshed"] and "no knowledge graph" in info["reason"]
    catalog = Catalog(tomllib.loads(TINY))
    store.write_catalog(catalog)
    config = EmbedConfig(dim=4, relation_dim=4, epochs=2, use_experience=False)
    emb, info = ensure_embeddings(store, refresh=False, config=config)
    assert emb == {} and not info["refreshed"]
    emb, info = ensure_embeddings(store, refresh=True, config=config)
    assert info["refreshed"] and info["reason"] == "no embeddings yet"
    assert set(emb) == {s.id for s in catalog.strategies()} and all(len(v) == 4 for v in emb.values())
    assert not ensure_embeddings(store, refresh=True, config=config)[1]["refreshed"]
    # a search's evaluations are not knowledge the embeddings learn from
    evaluate(store, A, catalog.strategies()[:1], "run-a", acc=0.85, params=600.0, pr=0.5, step=(-0.05, 0.5))
    assert ensure_embeddings(store, refresh=True, config=config)[1]["reason"] == "up to date"
    # a new experience is
    batch = GraphBatch()
    key = batch.task(A)
    batch.node("Experience", id="exp-1", source="test", level="method", algorithm="NS", settings="{}",
               ar=-0.01, pr=0.5, fr=0.4)
    batch.rel("EXP_ON_TASK", "exp-1", key)
    store.write(batch)
    again, info = ensure_embeddings(store, refresh=True, config=config)
    assert info["refreshed"] and "changed" in info["reason"] and math.isfinite(info["seconds"])


def test_first_proposals_come_from_the_measured_experience(kb_copy):
    """On a fresh KB (``kb init``: the measured experience beside the paper's tables) a ResNet-20 task's first
    proposals are the measured methods' one-step schemes at γ, best measured accuracy change first; the paper's
    tables, which rank the methods against what we measure (weight 0), never lead."""
    import csv
    import json

    from automc.importers import builtin_measured
    space = SearchSpace()
    task = TaskFeatures("resnet20", "cifar10-mine", 10, 32, 3, 5170, 0.915, 269722.0, 81.1e6)
    with open_store(f"ladybug://{kb_copy}") as s:
        prior = load_prior(s, task.id, task=task, target_pr=0.4, space=space)
        assert load_prior(s, task.id, task=task).experience == ()  # without a target: no experience proposals
    assert prior.transfer == prior.experience  # no past search in a fresh KB
    assert len(prior.experience) == 5 and all(len(k) == 1 and space.feasible(k) for k in prior.experience)
    rows = [r for r in csv.DictReader(builtin_measured().open())
            if abs(json.loads(r["hyperparameters"])["reduction_ratio"] - 0.4) <= 0.05]
    top = max(float(r["accuracy_change"]) for r in rows)
    best = {r["method"] for r in rows if float(r["accuracy_change"]) == top}  # SFP and LMA tie at -1.61%
    methods = [space.strategy(k[0]).method for k in prior.experience]
    assert methods[0] in best and set(methods) <= {r["method"] for r in rows}
    ctx = Context(space=space, target_pr=0.4, task=task, task_vector=task_vector(task, 0.4), transfer=prior.transfer,
                  options={"candidates": 20, "warm_steps": 5})
    first = ProgressiveStrategy(ctx).propose(History(Observation((), "COMPLETE", 0.9, 0.0, params=1000.0)), 4,
                                             round_rng(0, 0))
    assert first[:2] == list(prior.experience[:2])
