"""The loop's round: ``_walk`` orders a round's steps; ``_round`` evaluates them through an executor. With a
``SerialExecutor`` or Ray workers it evaluates what a plain serial walk evaluates, stores and hands them on in the
walk's order; a failure drops only its own extensions and lets later proposals into the budget; the budget and the
number of workers are never exceeded."""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

import pytest
import torch

from automc.kb import open_store
from automc.kb.states import State
from automc.search import STRATEGIES, search
from automc.search._base import History, Observation, SearchStrategy, search_rows
from automc.search._optimize import _ready, _round, _walk
from automc.search.executors import RayExecutor, SerialExecutor
from automc.search.space import SearchSpace
from automc.search.study import open_study
from tests.search.test_study import config, write_inputs

torch.set_num_threads(1)

# At PR 0.8 on this task FAIL fails ("cannot remove 72.0% ... at most 63.1% is reachable": no more than 70% of a
# layer's channels), and so does its extension FAIL > AFTER; the others reach their step (NS, then HALF, closes 0.8).
FAIL = "NS(target_ratio_factor=0.9, max_layer_prune_ratio=0.7)"
AFTER = "NS(target_ratio_factor=0.1)"
NS = "NS(target_ratio_factor=0.5)"
HALF = "LMA(target_ratio_factor=0.5)"
SFP = "SFP(target_ratio_factor=1.0)"
LMA = "LMA(target_ratio_factor=1.0)"


def obs(scheme, ok=True):
    return Observation(tuple(scheme), State.COMPLETE if ok else State.FAILED)


# -- the walk ---------------------------------------------------------------------------------------------------

def test_walk_gives_each_missing_prefix_once_in_proposal_order():
    proposals = [("a", "b"), ("a", "c"), ("d",), ("a", "b")]
    assert list(_walk(proposals)) == [("a",), ("a", "b"), ("a", "c"), ("d",)]
    h = History(obs(()), [obs(("a",)), obs(("d",), ok=False)])
    assert list(_walk(proposals, h)) == [("a", "b"), ("a", "c")]  # known steps are skipped
    h = History(obs(()), [obs(("a",), ok=False)])
    assert list(_walk([("a", "b"), ("e", "f")], h)) == [("e",), ("e", "f")]  # a known failure ends its proposal


def serial_walk(proposals, fails, history, budget):
    """A one-worker round: the walk's next step, evaluated before the walk is taken again, until the budget."""
    h, done = History(history.base, list(history.observations)), []
    while len(done) < budget and (key := next(_walk(proposals, h), None)) is not None:
        h.add(obs(key, key not in fails))
        done.append(key)
    return done


def scheduled(proposals, fails, history, budget, workers, rng):
    """The round as ``_round`` schedules it (``_ready`` while a worker is free), steps arriving in random order;
    returns the arrivals and the most steps in flight."""
    shadow, running, arrived, most = History(history.base, list(history.observations)), [], [], 0
    while True:
        while len(running) < workers and (ready := _ready(proposals, shadow, budget - len(arrived), running)):
            running.append(ready[0])
            most = max(most, len(running))
        if not running:
            return arrived, most
        key = running.pop(rng.randrange(len(running)))
        shadow.add(obs(key, key not in fails))
        arrived.append(key)


def test_ready_steps_in_any_arrival_order_are_the_serial_walks():
    rng = random.Random(0)
    for _ in range(300):
        def scheme():
            return tuple(rng.choice("abc") for _ in range(rng.randint(1, 3)))
        known = {scheme() for _ in range(rng.randint(0, 4))}
        proposals = [scheme() for _ in range(rng.randint(1, 6))]
        fails = {s for s in {p[:k] for p in proposals + list(known) for k in range(1, len(p) + 1)}
                 if rng.random() < 0.3}
        budget, workers = rng.randint(1, 8), rng.randint(1, 3)
        history = History(obs(()))
        for s in sorted(known, key=len):  # a history holds a scheme's prefixes before it
            if all(history.get(s[:k]) is not None and history.get(s[:k]).ok for k in range(len(s))):
                history.add(obs(s, s not in fails))
        serial = serial_walk(proposals, fails, history, budget)
        arrived, most = scheduled(proposals, fails, history, budget, workers, rng)
        assert sorted(arrived) == sorted(serial) and len(arrived) == len(set(arrived)) <= budget
        assert most <= workers
        # the place in the walk of the proposals alone, which ``_round`` stamps each step with as it arrives, puts
        # any part of the round in the serial order
        place = {k: i for i, k in enumerate(_walk(proposals))}
        assert sorted(arrived, key=place.__getitem__) == serial
        if workers == 1:
            assert arrived == serial


# -- the round on a real study ----------------------------------------------------------------------------------

class Watched:
    """An executor as ``_round`` sees it, recording what it is given: the most jobs in flight, and that each job's
    parent had arrived (or was known) before the job was submitted."""

    def __init__(self, inner, known) -> None:
        self.inner, self.workers = inner, inner.workers
        self.done, self.in_flight, self.most, self.orphans = set(known), 0, 0, []

    def submit(self, job) -> None:
        if job.scheme[:-1] not in self.done:
            self.orphans.append(job.scheme)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        self.inner.submit(job)

    def wait(self):
        outcome = self.inner.wait()
        self.in_flight -= 1
        self.done.add(outcome.result.scheme)
        return outcome

    def cancel(self) -> None:
        self.inner.cancel()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def study(inputs, d, budget=5):
    """A real study (store, run, evaluator), as ``search()`` sets it up."""
    return open_study(config(inputs, d, target_pr=0.8, max_steps=budget))


def two_rounds(st, executor):
    """Round 0 evaluates SFP; round 1 proposes FAIL > AFTER, NS > HALF, SFP (known), LMA with 4 steps of budget left."""
    p = st.space.parse
    first = _round(st, executor, [p(SFP)])
    st.round = 1
    proposals = [p(f"{FAIL} > {AFTER}"), p(f"{NS} > {HALF}"), p(SFP), p(LMA)]
    return first + _round(st, executor, proposals)


def reference(inputs, d):
    """The same two rounds as a plain serial walk with ``Evaluator.evaluate``."""
    ev = study(inputs, d).evaluator
    p = ev.space.parse
    history, out = History(obs(())), []
    for round_, proposals in enumerate(([p(SFP)], [p(f"{FAIL} > {AFTER}"), p(f"{NS} > {HALF}"), p(SFP), p(LMA)])):
        while len(history) < 5 and (key := next(_walk(proposals, history), None)) is not None:
            o = ev.evaluate(key).observation(round_, "")
            history.add(o)
            out.append(o)
    return out


def check_round(st, got, expected, watched):
    p = st.space.parse
    walk = [p(SFP), p(FAIL), p(NS), p(f"{NS} > {HALF}"), p(LMA)]
    # FAIL fails: FAIL > AFTER is dropped, so LMA (the last proposal) gets the budget's last step
    assert [o.scheme for o in expected] == walk and [o.ok for o in expected] == [True, False, True, True, True]
    assert [dataclasses.replace(o, evaluation_id="") for o in got] == expected  # same steps, order, results
    assert [o.scheme for o in st.history] == walk and len(st.history) == st.cfg.max_steps
    assert not watched.orphans and watched.in_flight == 0 and watched.most <= watched.workers
    with open_store(st.store, read_only=True) as s:
        rows = s.run_evaluations(st.id)
    # stored in the walk's order (what a resumed run reads its history in), whatever order the steps began in
    assert [o.evaluation_id for o in got] == [r["id"] for r in search_rows(rows)] == [r["id"] for r in rows]
    assert [r["state"] for r in rows] == [State.COMPLETE, State.FAILED, State.COMPLETE, State.COMPLETE,
                                          State.COMPLETE]


@pytest.fixture(scope="module")
def expected(inputs, tmp_path_factory):
    return reference(inputs, tmp_path_factory.mktemp("reference"))


def test_serial_round_is_the_plain_serial_walk(inputs, tmp_path, expected):
    st = study(inputs, tmp_path)
    watched = Watched(SerialExecutor(st.evaluator.context(portable=False)), [()])
    got = two_rounds(st, watched)
    check_round(st, got, expected, watched)
    assert watched.most == 1


@pytest.mark.slow
def test_ray_round_evaluates_what_the_serial_walk_does(inputs, tmp_path, expected):
    pytest.importorskip("ray")
    st = study(inputs, tmp_path)
    with RayExecutor(st.evaluator.context(), workers=2, cpus_per_worker=1, threads=1) as ray_ex:
        watched = Watched(ray_ex, [()])
        got = two_rounds(st, watched)
    check_round(st, got, expected, watched)
    assert watched.most == 2  # round 1 starts FAIL and NS side by side


def test_a_round_never_passes_the_budget(inputs, tmp_path):
    st = study(inputs, tmp_path, budget=2)
    p = st.space.parse
    watched = Watched(SerialExecutor(st.evaluator.context(portable=False)), [()])
    got = _round(st, watched, [p(f"{NS} > {HALF}"), p(LMA)])
    assert [o.scheme for o in got] == [p(NS), p(f"{NS} > {HALF}")] and len(st.history) == st.cfg.max_steps
    assert _round(st, watched, [p(LMA)]) == []  # nothing is left
    with open_store(st.store, read_only=True) as s:
        assert len(s.run_evaluations(st.id)) == 2


# -- the loop through ``search()`` ------------------------------------------------------------------------------

class Fixed(SearchStrategy):
    """Proposes FAIL > AFTER, NS > HALF and LMA (those not evaluated yet nor extending a failure); records what each
    round hands back."""

    name = "fixed-rounds"
    observed: ClassVar[list[list[tuple[str, ...]]]] = []

    def propose(self, history, n, rng):
        p = self.context.space.parse
        failed = {o.scheme for o in history if not o.ok}
        return [s for s in (p(f"{FAIL} > {AFTER}"), p(f"{NS} > {HALF}"), p(LMA))
                if s not in history and not any(s[:k] in failed for k in range(1, len(s)))][:n]

    def observe(self, history, new):
        Fixed.observed.append([o.scheme for o in new])


def test_search_counts_a_failed_step_in_the_budget_and_the_result(inputs, tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES._paths, Fixed.name, f"{__name__}:Fixed")
    monkeypatch.setattr(Fixed, "observed", [])
    cfg = config(inputs, tmp_path, strategy=Fixed.name, target_pr=0.8, max_steps=4, per_round=2)
    result = search(cfg)
    p = SearchSpace().parse
    # round 0: FAIL fails, so FAIL > AFTER is dropped and NS, NS > HALF fill the round's budget; round 1: LMA
    assert Fixed.observed == [[p(FAIL), p(NS), p(f"{NS} > {HALF}")], [p(LMA)]]
    assert result.state == State.COMPLETE and result.evaluations == 4 and result.failed == 1
    with open_store(cfg.store, read_only=True) as s:
        rows = search_rows(s.run_evaluations(result.run_id))
        (listed,) = s.list_runs()
    assert [r["state"] for r in rows] == [State.FAILED, State.COMPLETE, State.COMPLETE, State.COMPLETE]
    assert rows[0]["error"].startswith("CompressionError: cannot remove 72.0%")
    assert listed["evaluations"] == 4
