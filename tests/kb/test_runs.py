"""Search runs in the store contract: the ``Store`` run methods and the one ``State`` enum, on every backend; and the
in-place upgrade of stores schema version 2 wrote (records edited by hand, and a real run's export:
tests/fixtures/v2_search_run, see its README)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import ladybug
import pytest
from typer.testing import CliRunner

from automc.catalog import Scheme, load_catalog
from automc.cli.app import app
from automc.errors import NotFoundError, ValidationError
from automc.kb import GraphBatch, State, TaskFeatures, open_store
from automc.kb.schema import NODE, NODES, RELS, SCHEMA_VERSION
from automc.search._base import search_rows
from tests.conftest import automc_exe

TASK = TaskFeatures("resnet8", "syn.npz", 4, 16, 3, 192, 0.9, 5000.0, 1e6)
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v2_search_run"
# What schema version 3 added to version 2 (the v2 layout is the schema without them).
_V3_COLUMNS = {"Evaluation": ("step",)}


def _schemes(n: int = 3) -> list[Scheme]:
    ns = load_catalog().strategies("NS")
    return [Scheme(tuple(ns[:i + 1])) for i in range(n)]


def _run(store, run_id="r1"):
    store.create_run(run_id=run_id, algorithm="random", task=TASK, seed=3, target_pr=0.4, budget=5,
                     config={"config": {"model": "resnet8", "strategy_options": {"candidates": 2}}}, fingerprint="fp")


def _eval(store, scheme, run_id="r1", fidelity="search", **extra):
    return store.start_evaluation(TASK, scheme, target_pr=0.4, search_run=run_id,
                                  extra={"fidelity": fidelity, "round": 0, **extra})


def _set(store, label, key, **props):
    batch = GraphBatch()
    batch.node(label, **{NODE[label].key: key}, **props)
    store.write(batch)


def _state(store, eval_id):
    return store.query("MATCH (e:Evaluation {id: $id}) RETURN e.state AS state, e.error AS error, "
                       "e.train_seconds AS train, e.step AS step", {"id": eval_id})[0]


# -- the Store run methods ----------------------------------------------------------------------------------

def test_run_round_trip(store):
    _run(store)
    run = store.load_run("r1")
    assert (run.state, run.algorithm, run.seed, run.budget, run.round) == (State.RUNNING, "random", 3, 5, -1)
    assert run.config["config"]["model"] == "resnet8" and run.task == TASK.id and run.pid == os.getpid()
    store.update_run("r1", round=2, strategy_state={"w": [1, 2]}, front=[{"scheme": "x"}], seconds=4.5)
    assert store.load_run("r1").finished is None
    store.update_run("r1", state=State.COMPLETE)
    run = store.load_run("r1")
    assert (run.round, run.strategy_state, run.front, run.seconds) == (2, {"w": [1, 2]}, [{"scheme": "x"}], 4.5)
    assert run.state == State.COMPLETE and run.finished
    assert store.query("MATCH (r:SearchRun {id: 'r1'})-[:RUN_ON_TASK]->(t:Task) RETURN t.id AS t") == [{"t": TASK.id}]
    (listed,) = store.list_runs()
    assert (listed["id"], listed["state"], listed["evaluations"], listed["options"]) == ("r1", "COMPLETE", 0,
                                                                                        {"candidates": 2})


def test_unknown_run_and_property(store):
    with pytest.raises(NotFoundError, match="automc runs"):
        store.load_run("nope")
    _run(store)
    with pytest.raises(ValueError, match="no property"):
        store.update_run("r1", colour="red")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_run_takes_a_run_whose_owner_is_gone_and_refuses_a_live_one(store):
    _run(store)
    _set(store, "SearchRun", "r1", pid=_dead_pid())
    before = store.claim_run("r1")
    assert before.pid != os.getpid() and store.load_run("r1").pid == os.getpid()
    _set(store, "SearchRun", "r1", pid=1)  # alive on this host
    with pytest.raises(ValidationError, match="in use by process 1"):
        store.claim_run("r1")
    assert store.load_run("r1").pid == 1  # the refused claim wrote nothing
    store.update_run("r1", state=State.INTERRUPTED)
    _set(store, "SearchRun", "r1", pid=1)  # an ended run belongs to nobody, whoever wrote it last
    assert store.claim_run("r1").state == State.INTERRUPTED
    run = store.load_run("r1")
    assert (run.state, run.pid, run.finished) == (State.RUNNING, os.getpid(), None)


def test_evaluations_end_in_one_of_the_run_states(store):
    _run(store)
    a, ab, abc = _schemes()
    done = _eval(store, a)
    store.end_evaluation(done, {"state": State.COMPLETE, "val_accuracy": 0.8, "pr": 0.5, "train_seconds": 1.5})
    refused = _eval(store, ab)
    store.end_evaluation(refused, {"state": "FAIL", "error": "CompressionError: no", "train_seconds": 2.0})
    cut = _eval(store, abc)
    store.end_evaluation(cut, {"state": State.INTERRUPTED, "error": "interrupted", "train_seconds": 0.5})
    failed, stopped, running, final = (_eval(store, ab), _eval(store, abc), _eval(store, a),
                                       _eval(store, a, fidelity="final"))
    store.fail_evaluation(failed, "RuntimeError: boom")
    store.interrupt_evaluation(stopped, "interrupted: no space left")
    store.finish_evaluation(final, {"val_accuracy": 0.9, "pr": 0.5})
    assert store.interrupt_running("r1", "stale: the process died") == 1
    assert store.interrupt_running("r1", "again") == 0
    got = {k: _state(store, k) for k in (done, refused, cut, failed, stopped, running, final)}
    assert [got[k]["state"] for k in (done, refused, cut, failed, stopped, running, final)] == [
        State.COMPLETE, State.FAILED, State.INTERRUPTED, State.FAILED, State.INTERRUPTED, State.INTERRUPTED,
        State.COMPLETE]
    assert got[refused]["error"] == "CompressionError: no" and got[refused]["train"] == 2.0  # timing kept
    assert got[running]["error"] == "stale: the process died"
    assert {r["state"] for r in store.query("MATCH (e:Evaluation) RETURN e.state AS state")} <= set(State)
    rows = store.run_evaluations("r1")
    assert {r["id"] for r in search_rows(rows)} == {done, refused, failed}  # INTERRUPTED ones are done again
    assert store.list_runs()[0]["evaluations"] == 3 and store.list_runs()[0]["best"] == 0.8
    assert {e["id"] for e in store.evaluations(state=State.FAILED)} == {refused, failed}
    with pytest.raises(NotFoundError):
        store.interrupt_evaluation("nope", "interrupted")


def test_run_evaluations_follow_the_step_order(store):
    _run(store)
    schemes = _schemes(3) * 2
    steps = [4, 0, 3, 1, 2]
    ids = [_eval(store, s, step=n) for s, n in zip(schemes, steps, strict=False)]
    later = _eval(store, schemes[5], fidelity="final")  # a record without a step comes after the others
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i, eid in enumerate(ids):  # start stamps in the reverse of the step order: the step decides
        _set(store, "Evaluation", eid, created=(t0 - dt.timedelta(seconds=steps[i])).isoformat())
    store.end_evaluation(ids[0], {"state": State.COMPLETE, "step": 5, "val_accuracy": 0.5})
    store.end_evaluation(later, {"state": State.FAILED, "error": "x", "step": 6})
    rows = store.run_evaluations("r1")
    assert [r["id"] for r in rows] == [ids[1], ids[3], ids[4], ids[2], ids[0], later]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 5, 6]


# -- the upgrade of schema version 2 ------------------------------------------------------------------------

def _v2_store(path: Path, nodes: dict[str, list[dict]] = (), rels: dict[str, list[dict]] = ()) -> str:
    """A LadybugDB store laid out and stamped as schema version 2 wrote it, holding the given records."""
    db = ladybug.Database(str(path))
    c = ladybug.Connection(db)
    for n in NODES:
        cols = ", ".join(f"{name} {typ}" for name, typ in n.properties if name not in _V3_COLUMNS.get(n.label, ()))
        c.execute(f"CREATE NODE TABLE IF NOT EXISTS {n.label}({cols}, PRIMARY KEY ({n.key}))")
    for r in RELS:
        cols = "".join(f", {name} {typ}" for name, typ in r.properties)
        c.execute(f"CREATE REL TABLE IF NOT EXISTS {r.name}(FROM {r.src} TO {r.dst}{cols})")
    c.execute("CREATE (:Meta {key: 'schema_version', value: '2'})")
    for label, rows in dict(nodes).items():
        for row in rows:
            c.execute(f"CREATE (:{label} {{{', '.join(f'{k}: ${k}' for k in row)}}})", row)
    for name, rows in dict(rels).items():
        spec = next(r for r in RELS if r.name == name)
        for row in rows:
            props = {k: v for k, v in row.items() if k not in ("src", "dst")}
            c.execute(f"MATCH (a:{spec.src} {{{NODE[spec.src].key}: $src}}) "
                      f"MATCH (b:{spec.dst} {{{NODE[spec.dst].key}: $dst}}) "
                      f"CREATE (a)-[:{name} {{{', '.join(f'{k}: ${k}' for k in props)}}}]->(b)", row)
    db.close()
    return f"ladybug://{path}"


def _export_records(directory: Path) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    nodes: dict[str, list[dict]] = {}
    rels: dict[str, list[dict]] = {}
    for f in sorted(directory.glob("*.jsonl")):
        kind, _, name = f.stem.partition(".")
        (nodes if kind == "node" else rels)[name] = [json.loads(line) for line in f.read_text().splitlines()]
    return nodes, rels


def _hand_made_v2(path: Path) -> str:
    """A run as version 2 stored it: its evaluations' state FAIL for a refused step and for steps cut short."""
    def ev(key, state, round_, created, error=None):
        row = {"id": key, "state": state, "search_run": "r1", "fidelity": "search", "round": round_,
               "created": created}
        return row if error is None else {**row, "error": error}

    schemes = _schemes(3)
    evals = [ev("a", "COMPLETE", 0, "2026-01-01T10:00:00.100000+00:00"),
             ev("b", "FAIL", 0, "2026-01-01T10:00:00.200000+00:00", "CompressionError: LFB can remove at most"),
             ev("c", "FAIL", 1, "2026-01-01T10:00:01+00:00", "interrupted"),  # cut short: stamped to the second
             ev("d", "COMPLETE", 1, "2026-01-01T10:00:01.500000+00:00"),
             ev("e", "FAIL", 1, "2026-01-01T10:00:02+00:00", "stale: process 5 on h is gone"),
             ev("f", "FAIL", 1, "2026-01-01T10:00:00.300000+00:00", "RuntimeError: the search failed"),
             {"id": "g", "state": "FAIL", "error": "KeyboardInterrupt: ", "created": "2026-01-01T09:00:00+00:00"},
             {"id": "h", "state": "FAIL", "error": "CompressionError: target out of reach",
              "created": "2026-01-01T09:00:00+00:00"}]
    nodes = {"SearchRun": [{"id": "r1", "state": "INTERRUPTED", "algorithm": "random", "budget": 5}],
             "Scheme": [{"id": s.id, "text": s.text, "length": len(s)} for s in schemes], "Evaluation": evals}
    rels = {"EVAL_IN_RUN": [{"src": e["id"], "dst": "r1"} for e in evals if "search_run" in e],
            "EVAL_OF_SCHEME": [{"src": e["id"], "dst": schemes[i % 3].id} for i, e in enumerate(evals)]}
    return _v2_store(path, nodes, rels)


@pytest.mark.parametrize("read_only", [False, True])
def test_v2_states_become_failed_or_interrupted_and_steps_are_numbered(tmp_path, read_only):
    uri = _hand_made_v2(tmp_path / "v2.lbug")
    with open_store(uri, read_only=read_only) as s:
        assert s.schema_version() == SCHEMA_VERSION
        got = {k: _state(s, k) for k in "abcdefgh"}
        rows = s.run_evaluations("r1")
    assert {k: v["state"] for k, v in got.items()} == {
        "a": State.COMPLETE, "b": State.FAILED, "c": State.INTERRUPTED, "d": State.COMPLETE, "e": State.INTERRUPTED,
        "f": State.FAILED, "g": State.INTERRUPTED, "h": State.FAILED}
    assert got["c"]["error"] == "interrupted" and got["b"]["error"].startswith("CompressionError")
    # version 2's order (round, then start), a stamp to the second standing for the end of its second
    assert [r["id"] for r in rows] == ["a", "b", "f", "d", "c", "e"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert got["g"]["step"] is None  # not in a run
    with open_store(uri) as s:
        s.upgrade_records()  # idempotent
        assert s.run_evaluations("r1") == rows
        new = s.start_evaluation(TASK, _schemes(1)[0], search_run="r1", extra={"fidelity": "search", "round": 2})
        s.upgrade_records()  # a record without a step comes after the numbered ones
        assert _state(s, new)["step"] == 6 and _state(s, new)["state"] == State.RUNNING


def _check_fixture_run(s) -> list[dict]:
    """The fixture's run as this schema reads it: states mapped, steps in the order the run took them."""
    (run,) = s.list_runs()
    rows = s.run_evaluations(run["id"])
    assert [r["state"] for r in rows] == [State.COMPLETE, State.COMPLETE, State.FAILED, State.COMPLETE,
                                         State.INTERRUPTED]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[2]["error"].startswith("CompressionError: LFB") and rows[4]["error"] == "interrupted"
    step_of = {r["scheme_id"]: r["step"] for r in rows}
    assert all(step_of[r["parent"]] < r["step"] for r in rows if r["parent"] in step_of)  # a prefix comes first
    assert run["evaluations"] == len(search_rows(rows)) == 4 and run["state"] == State.INTERRUPTED
    assert s.query("MATCH (e:Evaluation) WHERE e.state = 'FAIL' RETURN count(e) AS n") == [{"n": 0}]
    return rows


@pytest.mark.parametrize("read_only", [False, True])
def test_a_store_of_a_v2_run_is_upgraded_in_place(tmp_path, read_only):
    uri = _v2_store(tmp_path / "kb", *_export_records(FIXTURE))
    with open_store(uri, read_only=read_only) as s:
        assert s.schema_version() == SCHEMA_VERSION
        _check_fixture_run(s)


def test_kb_import_of_a_v2_export_upgrades_its_records(tmp_path):
    uri = f"ladybug://{tmp_path / 'kb'}"
    runner = CliRunner()
    for _ in range(2):  # a second import of the same export changes nothing
        r = runner.invoke(app, ["kb", "import", str(FIXTURE), "--store", uri])
        assert r.exit_code == 0, r.output
        with open_store(uri, read_only=True) as s:
            _check_fixture_run(s)


@pytest.mark.slow
def test_resume_of_a_v2_run_is_refused_since_its_schemes_meant_other_models(tmp_path):
    """Its records upgrade and stay readable, but a v2 run's target_ratio_factor was a share of what was left to
    the target (now a share of the target): resuming would mix two meanings of one scheme text in one history."""
    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    uri = _v2_store(tmp_path / "kb", *_export_records(FIXTURE))
    with open_store(uri, read_only=True) as s:
        (run,) = s.list_runs()
        before = s.run_evaluations(run["id"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([exe, "search", "--resume", run["id"], "--store", uri, "--cache-dir", str(tmp_path / "cache"),
                          "--json"], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "--resume" in out.stderr and "start a new search" in out.stderr
    with open_store(uri, read_only=True) as s:
        assert s.load_run(run["id"]).state == run["state"] and s.run_evaluations(run["id"]) == before
        _check_fixture_run(s)
    assert not (tmp_path / "cache").exists()
