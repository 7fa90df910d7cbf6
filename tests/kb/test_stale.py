"""Stale RUNNING records: an evaluation or search run whose process is gone is marked INTERRUPTED by the sweep
(``Store.fail_stale``: a search's start, ``automc kb stale``), never by merely opening the store."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

from automc.catalog import load_catalog
from automc.kb import GraphBatch, State, TaskFeatures, open_store, sweep_stale
from automc.kb.store import owner

TASK = TaskFeatures("resnet8", "synthetic", 4, 16, 3, 400, 0.9, 1234.0, 5678.0)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _ago(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def _set(store, label, key, **props):
    batch = GraphBatch()
    batch.node(label, id=key, **props)
    store.write(batch)


def _state(store, label, key):
    return store.query(f"MATCH (e:{label} {{id: $id}}) RETURN e.state AS state, e.error AS error", {"id": key})[0]


def test_fail_stale_marks_only_records_whose_owner_is_gone(store):
    scheme = load_catalog().parse_scheme("LeGR()")
    mine = store.start_evaluation(TASK, scheme)  # this process: alive
    dead = store.start_evaluation(TASK, scheme)
    _set(store, "Evaluation", dead, pid=_dead_pid())
    far_old = store.start_evaluation(TASK, scheme)
    _set(store, "Evaluation", far_old, host="other-host", pid=1, heartbeat=_ago(7200))
    far_fresh = store.start_evaluation(TASK, scheme)
    _set(store, "Evaluation", far_fresh, host="other-host", pid=1, heartbeat=_ago(60))
    done = store.start_evaluation(TASK, scheme)
    _set(store, "Evaluation", done, pid=_dead_pid())
    store.finish_evaluation(done, {"accuracy": 0.5})
    _set(store, "SearchRun", "run-dead", state="RUNNING", started=_ago(10), **{**owner(), "pid": _dead_pid()})
    _set(store, "SearchRun", "run-live", state="RUNNING", started=_ago(10), **owner())

    assert sorted(store.fail_stale(max_age_s=3600)) == sorted([dead, far_old, "run-dead"])
    assert _state(store, "Evaluation", dead)["state"] == State.INTERRUPTED  # cut short: evaluated again
    assert _state(store, "Evaluation", dead)["error"].startswith("stale: process ")
    assert "no heartbeat from other-host" in _state(store, "Evaluation", far_old)["error"]
    for key in (mine, far_fresh):
        assert _state(store, "Evaluation", key)["state"] == "RUNNING"
    assert _state(store, "Evaluation", done)["state"] == State.COMPLETE
    assert _state(store, "SearchRun", "run-dead") == {"state": State.INTERRUPTED,
                                                      "error": _state(store, "SearchRun", "run-dead")["error"]}
    assert _state(store, "SearchRun", "run-dead")["error"].startswith("stale: ")
    assert _state(store, "SearchRun", "run-live")["state"] == State.RUNNING
    assert store.fail_stale(max_age_s=3600) == []  # idempotent
    assert store.fail_stale(max_age_s=30) == [far_fresh]  # a shorter limit on other hosts


def test_opening_writes_nothing_and_the_sweep_marks_stale(tmp_path):
    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    with open_store(uri) as s:
        eid = s.start_evaluation(TASK, load_catalog().parse_scheme("LeGR()"))
        _set(s, "Evaluation", eid, pid=_dead_pid())
    for kwargs in ({"read_only": True}, {}, {"create": False}):
        with open_store(uri, **kwargs) as s:
            assert _state(s, "Evaluation", eid)["state"] == State.RUNNING
    assert sweep_stale(uri) == [eid]
    with open_store(uri, read_only=True) as s:
        assert _state(s, "Evaluation", eid)["state"] == State.INTERRUPTED
    assert sweep_stale(uri) == []


def test_the_sweep_creates_no_store(tmp_path):
    assert sweep_stale(f"ladybug://{tmp_path / 'none' / 'kb.lbug'}") == []
    assert list(tmp_path.iterdir()) == []


def test_heartbeat_refreshes(store):
    eid = store.start_evaluation(TASK, load_catalog().parse_scheme("LeGR()"))
    _set(store, "Evaluation", eid, host="other-host", heartbeat=_ago(7200))
    store.heartbeat(eid)
    assert store.fail_stale(max_age_s=3600) == []


def test_heartbeat_callback_forwards_progress_and_beats(tmp_path):
    from automc.kb import heartbeat_callback

    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    with open_store(uri) as s:
        eid = s.start_evaluation(TASK, load_catalog().parse_scheme("LeGR()"))
        _set(s, "Evaluation", eid, host="other-host", heartbeat=_ago(7200))
    seen: list[str] = []
    beat = heartbeat_callback(uri, eid, seen.append, every_s=0.0)
    beat("step 1/1")
    assert seen == ["step 1/1"]
    with open_store(uri) as s:
        assert s.fail_stale(max_age_s=3600) == []
