"""Read-only opens, store creation rules, schema repair and the in-place upgrade of version-1 stores."""

from __future__ import annotations

import ladybug
import pytest

from automc.catalog import load_catalog
from automc.errors import NotFoundError, SchemaVersionError, StoreError, ValidationError
from automc.kb import TaskFeatures, open_store
from automc.kb.schema import NODE, NODES, REL, RELS, SCHEMA_VERSION

TASK = TaskFeatures("resnet8", "synthetic", 4, 16, 3, 400, 0.9, 1234.0, 5678.0)


@pytest.fixture
def uri(tmp_path):
    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    with open_store(uri) as s:
        s.query("CREATE (:Model {name: 'm'})")
    return uri


@pytest.mark.parametrize("cypher", ["CREATE (:Model {name: 'x'})", "MATCH (n) DETACH DELETE n",
                                    "MATCH (m:Model) SET m.name = 'y'", "DROP TABLE Model",
                                    "CREATE NODE TABLE X(id STRING, PRIMARY KEY (id))"])
def test_read_only_store_refuses_writes(uri, cypher):
    with open_store(uri, read_only=True) as s, pytest.raises(StoreError, match="read-only"):
        s.query(cypher)
    with open_store(uri, read_only=True) as s:
        assert s.query("MATCH (m:Model) RETURN m.name AS name") == [{"name": "m"}]
        assert s.schema_version() == SCHEMA_VERSION


@pytest.mark.parametrize("cypher", ["COPY (MATCH (m:Model) RETURN m.name) TO '{out}'", "LOAD FROM '{src}' RETURN *",
                                    "EXPORT DATABASE '{out}'", "load from '{src}' return *", "INSTALL json",
                                    "CHECKPOINT"])
def test_read_only_query_reaches_no_host_files(uri, tmp_path, cypher):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("a\n1\n")
    with open_store(uri, read_only=True) as s, pytest.raises(ValidationError, match="--write"):
        s.query(cypher.format(src=src, out=out))
    assert not out.exists()
    with open_store(uri, read_only=True) as s:  # words inside strings are data, not statements
        assert s.query("RETURN 'COPY x TO y; LOAD FROM z' AS t") == [{"t": "COPY x TO y; LOAD FROM z"}]


def test_writable_store_may_copy(uri, tmp_path):
    out = tmp_path / "out.csv"
    with open_store(uri) as s:
        s.query(f"COPY (MATCH (m:Model) RETURN m.name) TO '{out}'")
    assert out.read_text().strip().splitlines()[-1] == "m"


@pytest.mark.parametrize("bad", ["ladybug:/kb", "::::", "neo4j:localhost"])
def test_mistyped_uris_are_refused(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="not a store URI"):
        open_store(bad)
    assert list(tmp_path.iterdir()) == []


def test_only_creating_opens_create(tmp_path):
    path = tmp_path / "no" / "such" / "kb.lbug"
    for kwargs in ({"create": False}, {"read_only": True}):
        with pytest.raises(NotFoundError, match=r"no knowledge base at .*automc kb init"):
            open_store(f"ladybug://{path}", **kwargs)
    assert list(tmp_path.iterdir()) == []
    with open_store(f"ladybug://{path}", create=True) as s:
        assert s.created
    assert path.exists()


def test_missing_version_node_is_repaired_by_init_open(uri):
    with open_store(uri) as s:
        s.query("MATCH (n) DETACH DELETE n")  # what 'kb query --write' let a user do
    with pytest.raises(SchemaVersionError, match="automc kb init"):
        open_store(uri, read_only=True)
    with open_store(uri, repair=True) as s:
        assert s.schema_version() == SCHEMA_VERSION
    with open_store(uri, read_only=True) as s:
        assert s.stats()["nodes"]["Model"] == 0


def test_dropped_table_is_repaired(uri):
    with open_store(uri) as s:
        s.query("DROP TABLE EXTENDS")
    with pytest.raises(SchemaVersionError, match="EXTENDS.*automc kb init"):
        open_store(uri, read_only=True)
    with open_store(uri, repair=True) as s:
        assert s.stats()["relationships"]["EXTENDS"] == 0


# What version 1 (the previous release) lacked: these columns and these relationship tables.
_V2_COLUMNS = {"Evaluation": ("host", "pid", "heartbeat", "fidelity", "round", "parent", "val_accuracy_low",
                              "val_accuracy_high", "step_ar", "step_pr", "epochs", "data_fraction", "seed",
                              "val_source", "train_seconds"),
               "SearchRun": ("task", "seed", "target_pr", "budget", "front", "strategy_state", "round", "seconds",
                             "fingerprint", "host", "pid", "heartbeat", "error")}
_V2_RELS = ("EXTENDS", "RUN_ON_TASK")


def _v1_store(path) -> None:
    db = ladybug.Database(str(path))
    c = ladybug.Connection(db)
    for n in NODES:
        cols = ", ".join(f"{name} {typ}" for name, typ in n.properties if name not in _V2_COLUMNS.get(n.label, ()))
        c.execute(f"CREATE NODE TABLE {n.label}({cols}, PRIMARY KEY ({n.key}))")
    for r in RELS:
        if r.name not in _V2_RELS:
            cols = "".join(f", {name} {typ}" for name, typ in r.properties)
            c.execute(f"CREATE REL TABLE {r.name}(FROM {r.src} TO {r.dst}{cols})")
    c.execute("CREATE (:Meta {key: 'schema_version', value: '1'})")
    c.execute("CREATE (:Evaluation {id: 'old', state: 'COMPLETE', accuracy: 0.75})")
    c.execute("CREATE (:SearchRun {id: 'run', state: 'COMPLETE', algorithm: 'random'})")
    c.execute("MATCH (e:Evaluation {id: 'old'}), (r:SearchRun {id: 'run'}) CREATE (e)-[:EVAL_IN_RUN]->(r)")
    db.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_version_1_store_is_upgraded_in_place(tmp_path, read_only):
    assert set(_V2_COLUMNS["Evaluation"]) <= set(NODE["Evaluation"].names) and set(_V2_RELS) <= set(REL)
    path = tmp_path / "v1.lbug"
    _v1_store(path)
    with open_store(f"ladybug://{path}", read_only=read_only) as s:
        assert s.schema_version() == SCHEMA_VERSION
        old = s.query("MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(r:SearchRun) "
                      "RETURN e.id AS id, e.accuracy AS acc, e.host AS host, r.budget AS budget")
        assert old == [{"id": "old", "acc": 0.75, "host": None, "budget": None}]
    with open_store(f"ladybug://{path}") as s:  # and the new fields and tables take writes
        eid = s.start_evaluation(TASK, load_catalog().parse_scheme("LeGR() > LeGR()"), extra={"round": 2})
        row = s.query("MATCH (e:Evaluation {id: $id}) RETURN e.round AS r, e.pid AS pid", {"id": eid})[0]
        assert row["r"] == 2 and row["pid"] > 0
        assert s.stats()["relationships"]["EXTENDS"] == 2


def test_unknown_version_is_still_refused(uri):
    with open_store(uri) as s:
        s.query("MATCH (m:Meta {key: 'schema_version'}) SET m.value = '7'")
    with pytest.raises(SchemaVersionError, match="version 7"):
        open_store(uri, repair=True)
