"""Search runs in a real LadybugDB through the ``Store`` run methods: write, update and read a run; rebuild its
history; the named queries."""

from __future__ import annotations

import pytest

from automc.catalog import Scheme, load_catalog
from automc.errors import NotFoundError
from automc.kb import TaskFeatures, open_store
from automc.kb.states import State
from automc.search._base import Observation, observation, search_rows

TASK = TaskFeatures("resnet8", "syn.npz", 4, 16, 3, 192, 0.9, 5000.0, 1e6)


@pytest.fixture
def kb(tmp_path):
    with open_store(f"ladybug://{tmp_path / 'kb'}") as s:
        yield s


def _schemes():
    ns = load_catalog().strategies("NS")
    return Scheme((ns[0],)), Scheme((ns[0], ns[1])), Scheme((ns[2],))


def _run(kb, run_id="r1"):
    kb.create_run(run_id=run_id, algorithm="random", task=TASK, seed=3, target_pr=0.4, budget=5,
                  config={"config": {"model": "resnet8"}}, fingerprint="fp")


def _eval(kb, scheme, run_id="r1", round_=0, fidelity="search"):
    return kb.start_evaluation(TASK, scheme, target_pr=0.4, search_run=run_id,
                               extra={"fidelity": fidelity, "round": round_,
                                      "parent": Scheme(scheme.strategies[:-1]).id})


def test_the_module_functions_delegate_to_the_store_methods(kb):
    """The functions callers not yet moved to ``Store``'s run methods use (tests/kb/test_runs.py covers them)."""
    _run(kb)
    run = kb.load_run("r1")
    assert (run.state, run.algorithm, run.seed, run.budget, run.round) == ("RUNNING", "random", 3, 5, -1)
    assert run.config == {"config": {"model": "resnet8"}} and run.task == TASK.id and run.pid
    kb.update_run("r1", round=2, strategy_state={"w": [1, 2]}, front=[{"scheme": "x"}], seconds=4.5)
    kb.update_run("r1", state="COMPLETE")
    run = kb.load_run("r1")
    assert (run.round, run.strategy_state, run.front, run.seconds) == (2, {"w": [1, 2]}, [{"scheme": "x"}], 4.5)
    assert run.state == "COMPLETE" and run.finished
    rows = kb.query("MATCH (r:SearchRun {id: 'r1'})-[:RUN_ON_TASK]->(t:Task) RETURN t.id AS t")
    assert rows == [{"t": TASK.id}]


def test_unknown_run_and_property(kb):
    with pytest.raises(NotFoundError, match="automc runs"):
        kb.load_run("nope")
    _run(kb)
    with pytest.raises(ValueError, match="no property"):
        kb.update_run("r1", colour="red")


def test_history_rows_skip_steps_cut_short_and_other_fidelities(kb):
    _run(kb)
    a, ab, c = _schemes()
    e1 = _eval(kb, a)
    kb.end_evaluation(e1, {"state": "COMPLETE", "val_accuracy": 0.8, "accuracy": 0.7, "pr": 0.2,
                           "train_seconds": 1.5})
    e2 = _eval(kb, ab)
    kb.end_evaluation(e2, {"state": State.FAILED, "error": "CompressionError: no", "train_seconds": 2.0})
    e3 = _eval(kb, c, round_=1)
    kb.interrupt_running("r1", "stale: the process died")
    e4 = _eval(kb, a, fidelity="final", round_=1)
    kb.end_evaluation(e4, {"state": "COMPLETE", "val_accuracy": 0.9, "accuracy": 0.8, "pr": 0.2})
    rows = kb.run_evaluations("r1")
    assert [r["id"] for r in rows][:2] == [e1, e2] and {r["id"] for r in rows} == {e1, e2, e3, e4}
    failed = next(r for r in rows if r["id"] == e2)
    assert next(r for r in rows if r["id"] == e3)["state"] == State.INTERRUPTED
    assert failed["state"] == State.FAILED and failed["train_seconds"] == 2.0 and failed["error"].startswith("Compr")
    steps = search_rows(rows)
    assert [r["id"] for r in steps] == [e1, e2]
    obs = [observation(r) for r in steps]
    assert obs[0] == Observation(tuple(s.id for s in a.strategies), "COMPLETE", 0.8, 0.2, None, None, None, 0, e1)
    assert obs[1].scheme == tuple(s.id for s in ab.strategies) and not obs[1].ok
    listed = kb.list_runs()
    assert [(r["id"], r["evaluations"], r["best"]) for r in listed] == [("r1", 2, None)]  # PR 0.2 < gamma 0.4


def test_evaluations_link_run_and_parent(kb):
    _run(kb)
    a, ab, _ = _schemes()
    _eval(kb, a)
    _eval(kb, ab)
    rows = kb.query("MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(:SearchRun {id: 'r1'}) MATCH (e)-[:EVAL_OF_SCHEME]->(s) "
                    "MATCH (s)-[:EXTENDS]->(p:Scheme) RETURN s.id AS s, p.id AS p, e.parent AS parent")
    assert {(r["s"], r["p"]) for r in rows} == {(a.id, Scheme(()).id), (ab.id, a.id)}
    assert all(r["p"] == r["parent"] for r in rows)


def test_best_schemes_query(kb):
    _run(kb)
    a, ab, c = _schemes()
    for scheme, pr, acc in ((a, 0.3, 0.9), (ab, 0.5, 0.7), (c, 0.45, 0.8)):
        e = _eval(kb, scheme)
        kb.end_evaluation(e, {"state": "COMPLETE", "pr": pr, "accuracy": acc, "val_accuracy": acc})
    rows = kb.named("best-schemes", {"model": "resnet8", "min_pr": "0.4"})
    assert [r["scheme"] for r in rows] == [c.text, ab.text]
    assert kb.named("best-schemes", {"model": "vgg16", "min_pr": 0.4}) == []
