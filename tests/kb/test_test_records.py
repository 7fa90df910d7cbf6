"""Final models' per-image test records in the store: written, read back bit for bit by ``test-records``, and a store
of schema version 3 (without those columns) upgraded in place to take them."""

from __future__ import annotations

import ladybug
import numpy as np
import pytest

from automc.catalog import load_catalog
from automc.compress.paired import compare_evaluations, decode_bits, encode_bits
from automc.kb import TaskFeatures, open_store
from automc.kb.schema import NODE, NODES, RELS, SCHEMA_VERSION

TASK = TaskFeatures("resnet8", "synthetic", 4, 16, 3, 400, 0.9, 1234.0, 5678.0)
_V4_COLUMNS = ("test_correct_bits", "test_ids_hash")


def _v3_store(path) -> str:
    """A LadybugDB store laid out and stamped as schema version 3 wrote it: no per-image test columns."""
    db = ladybug.Database(str(path))
    c = ladybug.Connection(db)
    for n in NODES:
        cols = ", ".join(f"{name} {typ}" for name, typ in n.properties
                         if n.label != "Evaluation" or name not in _V4_COLUMNS)
        c.execute(f"CREATE NODE TABLE {n.label}({cols}, PRIMARY KEY ({n.key}))")
    for r in RELS:
        cols = "".join(f", {name} {typ}" for name, typ in r.properties)
        c.execute(f"CREATE REL TABLE {r.name}(FROM {r.src} TO {r.dst}{cols})")
    c.execute("CREATE (:Meta {key: 'schema_version', value: '3'})")
    db.close()
    return f"ladybug://{path}"


def _store_final(s, scheme: str, correct: np.ndarray, ids: str) -> str:
    eid = s.start_evaluation(TASK, load_catalog().parse_scheme(scheme), search_run="r", extra={"fidelity": "final"})
    s.finish_evaluation(eid, {"accuracy": float(correct.mean()), "val_accuracy": 0.5, "pr": 0.5,
                              "test_correct_bits": encode_bits(correct), "test_ids_hash": ids})
    return eid


@pytest.mark.parametrize("read_only", [False, True])
def test_a_v3_store_takes_per_image_test_records(tmp_path, read_only):
    assert set(_V4_COLUMNS) <= set(NODE["Evaluation"].names)
    uri = _v3_store(tmp_path / "v3.lbug")
    with open_store(uri, read_only=read_only) as s:
        assert s.schema_version() == SCHEMA_VERSION >= 4
        assert s.named("test-records") == []
    rng = np.random.default_rng(0)
    a, b = rng.random(1001) < 0.8, rng.random(1001) < 0.7
    with open_store(uri) as s:
        ids = [_store_final(s, "LFB", a, "h1"), _store_final(s, "SFP", b, "h1")]
        search_step = s.start_evaluation(TASK, load_catalog().parse_scheme("NS"), search_run="r",
                                         extra={"fidelity": "search"})
        s.finish_evaluation(search_step, {"val_accuracy": 0.99, "pr": 0.5})  # no test record: not listed
    with open_store(uri, read_only=True) as s:
        rows = s.named("test-records", {"run": "r"})
        one = s.named("test-records", {"id": ids[1]})
        (task,) = [t["task"] for t in s.named("tasks")]
        best = s.named("best-evaluations", {"task": task, "min_pr": 0.4})
        schemes = s.named("best-schemes", {"model": "resnet8", "min_pr": 0.4})
    # measured test accuracy first; a search step (never tested) after, whatever its validation accuracy
    assert [r["accuracy"] is None for r in best] == [False, False, True] and best[0]["accuracy"] == a.mean()
    assert [r["accuracy"] is None for r in schemes] == [False, False, True]
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == set(ids) and [r["id"] for r in one] == ids[1:]
    assert np.array_equal(decode_bits(by_id[ids[0]]["test_correct_bits"]), a)
    assert np.array_equal(decode_bits(by_id[ids[1]]["test_correct_bits"]), b)
    r = compare_evaluations(by_id[ids[0]], by_id[ids[1]])
    assert (r.b01, r.b10) == (int(np.sum(~a & b)), int(np.sum(a & ~b))) and r.n == 1001
