"""The store contract, run against every backend (PyKEEN/Optuna style: one test class, many stores)."""

from __future__ import annotations

import json

import pytest

from automc.catalog import load_catalog
from automc.errors import NotFoundError, SchemaVersionError, StoreError, ValidationError
from automc.kb import GraphBatch, TaskFeatures, open_store, queries
from automc.kb.schema import KG_RELATIONS, NODES, RELS, SCHEMA_VERSION
from automc.kb.states import State

TASK = TaskFeatures("resnet8", "synthetic", 4, 16, 3, 400, 0.9, 1234.0, 5678.0)


def test_new_store_has_schema_and_version(store):
    assert store.schema_version() == SCHEMA_VERSION
    stats = store.stats()
    assert set(stats["nodes"]) == {n.label for n in NODES} - {"Meta"}
    assert set(stats["relationships"]) == {r.name for r in RELS}
    assert sum(stats["nodes"].values()) == 0


def test_catalog_write_is_complete_and_idempotent(store):
    cat = load_catalog()
    store.write_catalog(cat)
    first = store.stats()
    assert first["nodes"]["Method"] == 7
    assert first["nodes"]["Strategy"] == 9042
    assert first["nodes"]["Technique"] == len(cat.techniques)
    for rel in KG_RELATIONS:
        assert first["relationships"][rel] > 0, rel
    # every strategy has one method and one setting per hyperparameter
    assert first["relationships"]["HAS_METHOD"] == 9042
    assert first["relationships"]["HAS_SETTING"] == sum(len(s.settings) for s in cat.strategies())
    store.write_catalog(cat)
    assert store.stats() == first


def test_failed_transaction_writes_nothing(store):
    batch = GraphBatch()
    batch.node("Model", name="m1")
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.write(batch)
        raise RuntimeError("boom")
    assert store.stats()["nodes"]["Model"] == 0


def test_bad_property_is_rejected_atomically(store):
    batch = GraphBatch()
    batch.node("Model", name="ok")
    batch.node("Dataset", name="d", colour="red")  # not in the schema
    with pytest.raises(StoreError, match="colour"):
        store.write(batch)
    assert store.stats()["nodes"]["Model"] == 0


def test_user_values_are_parameters_not_query_text(store):
    nasty = "x'}) DETACH DELETE n //\""
    batch = GraphBatch()
    batch.node("Model", name=nasty)
    store.write(batch)
    rows = store.query("MATCH (m:Model {name: $n}) RETURN m.name AS name", {"n": nasty})
    assert rows == [{"name": nasty}]


def test_every_named_query_runs(store):
    store.write_catalog(load_catalog())
    samples = {"method": "NS", "setting": "kd_alpha=0.3", "technique": "fine_tuning", "task": TASK.id,
               "scheme": "x", "strategy": load_catalog().strategies("NS")[0].id, "dataset": "cifar10",
               "run": "x", "model": "resnet56"}
    for q in queries.QUERIES.values():
        params = {p.name: samples[p.name] for p in q.params if p.name in samples}
        rows = store.named(q.name, params)
        assert isinstance(rows, list)
    assert len(store.named("strategies-of-method", {"method": "NS"})) == 72
    assert len(store.named("strategies-with-setting", {"setting": "aux_loss=NLL"})) == 30
    with pytest.raises(NotFoundError):
        store.named("no-such-query")
    with pytest.raises(ValidationError, match="method"):
        store.named("strategies-of-method", {})


def test_evaluation_lifecycle(store):
    cat = load_catalog()
    store.write_catalog(cat)
    ns = cat.strategies("NS")[3]
    scheme = cat.parse_scheme(f"{ns.id} > {ns.id} > LFB(aux_loss_factor=0.7)")  # off-grid value in step 3
    eid = store.start_evaluation(TASK, scheme, target_pr=0.4, search_run=None, device="cpu")
    assert store.evaluations(state="RUNNING")[0]["id"] == eid
    store.finish_evaluation(eid, {"params": 600.0, "accuracy": 0.8, "pr": 0.5, "steps": [{"a": 1}]})
    done = store.evaluations(task=TASK.id)
    assert [(d["id"], d["scheme"], d["pr"]) for d in done] == [(eid, scheme.text, 0.5)]
    steps = store.named("scheme-steps", {"scheme": scheme.id})
    assert [s["strategy"] for s in steps] == [s.id for s in scheme.strategies]
    # the off-grid strategy exists but is not part of the catalogue
    assert len(store.strategies("LFB")) == 60
    assert len(store.strategies("LFB", in_catalog=False)) == 61
    eid2 = store.start_evaluation(TASK, scheme)
    store.fail_evaluation(eid2, "out of memory")
    assert [e["id"] for e in store.evaluations(state=State.FAILED)] == [eid2]
    with pytest.raises(NotFoundError):
        store.finish_evaluation("missing", {})


def test_embeddings_round_trip(store):
    store.write_catalog(load_catalog())
    vecs = {s["id"]: [float(i), 0.5, -1.25] for i, s in enumerate(store.strategies("NS"))}
    run = store.set_embeddings("Strategy", vecs, {"kb_version": store.content_version(), "config": {"dim": 3}})
    assert store.embeddings("Strategy") == vecs
    runs = store.named("embedding-runs")
    assert runs[0]["id"] == run and json.loads(runs[0]["config"]) == {"dim": 3}
    with pytest.raises(StoreError):
        store.set_embeddings("Task", {"x": [1.0]}, {})


def test_ladybug_schema_version_mismatch_is_refused(tmp_path):
    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    with open_store(uri) as s:
        s.query("MATCH (m:Meta {key: 'schema_version'}) SET m.value = $v", {"v": "999"})
    with pytest.raises(SchemaVersionError, match="automc kb export"):
        open_store(uri)


def test_unknown_store_scheme():
    with pytest.raises(ValidationError, match="scheme"):
        open_store("sqlite:///x.db")


def test_content_version_follows_content_not_counts(store):
    store.write_catalog(load_catalog())
    batch = GraphBatch()
    key = batch.task(TASK)
    batch.node("Experience", id="e1", level="method", algorithm="NS", ar=-0.01, pr=0.4)
    batch.rel("EXP_ON_TASK", "e1", key)
    store.write(batch)
    v1 = store.content_version()
    assert store.content_version() == v1
    store.query("MATCH (e:Experience {id: 'e1'}) SET e.ar = $ar", {"ar": -0.02})  # same counts, new content
    assert store.content_version() != v1
