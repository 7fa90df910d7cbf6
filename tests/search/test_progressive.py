"""Progressive search on a synthetic objective: valid proposals, determinism, resume, transfer, reuse."""

from __future__ import annotations

import json
import tomllib
from importlib import resources

import numpy as np
import pytest
import torch

from automc.catalog import Catalog
from automc.compress.base import step_ratio
from automc.kb.states import State
from automc.search._base import Context, History, Observation, StepRecord, round_rng
from automc.search._optimize import _walk
from automc.search.pareto import front
from automc.search.progressive import ProgressiveStrategy, step_records
from automc.search.space import SearchSpace

torch.set_num_threads(1)

METHODS = ("NS", "SFP", "LFB")
TASK = (2.3, 3.4, 3.0, 8.5, 0.9, 13.6, 18.0, 0.4)
FAST = {"candidates": 120, "fit_steps": 20, "warm_steps": 60}


def small_space(max_length: int = 3) -> SearchSpace:
    """The real search space over three methods' grid strategies (the catalogue's rules), at most three steps."""
    data = tomllib.loads(resources.files("automc.catalog").joinpath("catalog.toml").read_text())
    data["methods"] = {m: v for m, v in data["methods"].items() if m in METHODS}
    data["search"]["exclude"] = []  # the catalogue's exclusion (LFB) is tested in test_space
    return SearchSpace(Catalog(data), max_length=max_length)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return small_space()


BASE_PARAMS = 1000.0
LOSS = {"NS": 0.05, "SFP": 0.08, "LFB": 0.01}
REMOVES = {"NS": 0.5, "SFP": 0.6, "LFB": 0.7}  # what a prior of another task says each method removes


def measure(space: SearchSpace, scheme) -> tuple[float, float]:
    """Synthetic (validation accuracy, params): each step removes what ``step_ratio`` asks and costs a
    method-dependent accuracy growing with its share of the target."""
    acc, params = 0.9, BASE_PARAMS
    for sid in scheme:
        s = space.strategy(sid)
        trf = float(s.params["target_ratio_factor"])
        params *= 1 - step_ratio(0.4, BASE_PARAMS, params, trf)
        acc *= 1 - LOSS[s.method] * (1 + trf)
    return acc, params


def observe(space, scheme, round_):
    acc, params = measure(space, scheme)
    return Observation(tuple(scheme), "COMPLETE", acc, 1 - params / BASE_PARAMS, None, params, None, round_,
                       f"e-{'|'.join(scheme)}")


def new_history(space) -> History:
    return History(observe(space, (), 0))


def run_round(strategy, history, space, seed, r, n=10):
    """What the loop does: propose, evaluate the round walk's steps (every missing prefix), observe."""
    proposals = strategy.propose(history, n, round_rng(seed, r))
    new = []
    for key in _walk(proposals, history):  # every step succeeds here: one pass of the walk is the round
        obs = observe(space, key, r)
        history.add(obs)
        new.append(obs)
    strategy.observe(history, new)
    return proposals


def context(space, seed=0, **kw) -> Context:
    return Context(space=space, target_pr=0.4, seed=seed, task_vector=TASK, options={**FAST, **kw.pop("options", {})},
                   **kw)


def test_proposals_are_valid_new_and_distinct(space):
    s = ProgressiveStrategy(context(space))
    history = new_history(space)
    for r in range(3):
        before = {o.scheme for o in history}
        proposals = s.propose(history, 10, round_rng(0, r))
        assert 0 < len(proposals) <= 10
        assert len(set(proposals)) == len(proposals)
        assert all(space.feasible(p) and p not in before and p for p in proposals)
        assert all(measure(space, p)[1] == pytest.approx(BASE_PARAMS * 0.6) for p in proposals)  # PR 0.4 each
        for key in _walk(proposals, history):
            history.add(observe(space, key, r))
        s.observe(history, [])
    assert s.trained_on == {"this-task": len(step_records(history, "this-task", TASK))}
    assert s.propose(history, 0, round_rng(0, 9)) == []


def test_same_seed_same_proposals_and_resume_matches(space):
    seed = 5
    a, b = ProgressiveStrategy(context(space, seed)), ProgressiveStrategy(context(space, seed))
    ha, hb = new_history(space), new_history(space)
    for r in range(3):
        assert run_round(a, ha, space, seed, r) == run_round(b, hb, space, seed, r)
    # Rebuilt after round 3 from the history as the store returns it (any order) and the stored state.
    state = json.loads(json.dumps(a.state_dict()))
    shuffled = list(ha.observations)
    np.random.default_rng(0).shuffle(shuffled)
    rebuilt = ProgressiveStrategy(context(space, seed))
    rebuilt.load_state_dict(state)
    expected = a.propose(ha, 10, round_rng(seed, 3))
    assert expected
    assert rebuilt.propose(History(ha.base, shuffled), 10, round_rng(seed, 3)) == expected
    assert rebuilt.trained_on == a.trained_on == state["trained_on"]
    other = ProgressiveStrategy(context(space, seed + 1))
    assert other.propose(History(ha.base, shuffled), 10, round_rng(seed + 1, 3)) != expected


def test_transfer_schemes_are_proposed_first(space):
    ns = next(s for s in space.ids if s.startswith("NS(") and "target_ratio_factor=0.3" in s)
    lfb = next(s for s in space.ids if s.startswith("LFB("))
    sfp = next(s for s in space.ids if s.startswith("SFP(") and "target_ratio_factor=1.0" in s)
    transfer = [(ns, lfb), (lfb, ns), (lfb,), (sfp,)]  # the second does not reach the target here: never proposed
    s = ProgressiveStrategy(context(space, transfer=transfer, options={"transfer_rounds": 2}))
    history = new_history(space)
    # spread over the transfer rounds (two a round), first in each round's proposals
    assert run_round(s, history, space, 0, 0)[:2] == [(ns, lfb), (lfb,)]
    assert run_round(s, history, space, 0, 1)[0] == (sfp,)
    assert (ns, lfb) in history and (lfb,) in history and (lfb, ns) not in history
    late = s.propose(history, 10, round_rng(0, 2))
    assert late and not {(ns, lfb), (lfb,), (sfp,)} & set(late)


def test_prior_from_another_task_steers_the_first_round(space):
    """Steps of another task say LFB removes much and costs nothing, SFP costs much: F_mo, warm-started on them,
    makes round 0 prefer LFB; a strategy without the prior picks at random."""
    rng = np.random.default_rng(0)
    prior = []
    for _ in range(400):
        sid = space.ids[int(rng.integers(len(space.ids)))]
        s = space.strategy(sid)
        trf = float(s.params["target_ratio_factor"])
        prior.append(StepRecord((), sid, "other-task", TASK, -LOSS[s.method] * (1 + trf),
                                REMOVES[s.method] * trf * 0.4))
    warm = ProgressiveStrategy(context(space, prior=prior, options={"warm_steps": 300}))
    cold = ProgressiveStrategy(context(space))
    h = new_history(space)
    share = {}
    for name, strat in (("warm", warm), ("cold", cold)):
        props = strat.propose(h, 10, round_rng(0, 0))
        share[name] = np.mean([space.strategy(p[-1]).method == "LFB" for p in props])
    assert warm.trained_on.get("other-task", 0) > 100 and "other-task" not in cold.trained_on
    assert share["warm"] >= 0.7 > share["cold"], share


def test_search_reaches_the_target_on_the_front(space):
    seed = 1
    s = ProgressiveStrategy(context(space, seed))
    h = new_history(space)
    for r in range(4):
        run_round(s, h, space, seed, r)
    best = front(h.complete(), target_pr=0.4)
    assert best and all(o.pr >= 0.4 for o in best)
    assert all(np.isfinite(x) for x in s.losses)


def test_on_the_real_catalogue_space():
    """The whole 8 934-strategy space with its rules: proposals obey them and a round stays cheap."""
    import time

    from automc.search.space import SearchSpace

    real = SearchSpace()
    s = ProgressiveStrategy(Context(space=real, target_pr=0.4, seed=3, task_vector=TASK))
    h = History(Observation((), "COMPLETE", 0.9, 0.0, params=BASE_PARAMS))
    rng = np.random.default_rng(0)
    for r in range(3):
        started = time.perf_counter()
        proposals = s.propose(h, 10, round_rng(3, r))
        assert time.perf_counter() - started < 5
        assert len(proposals) == 10 and all(real.feasible(p) and p not in h for p in proposals)
        for key in _walk(proposals, h):
            parent = h.get(key[:-1])
            params = parent.params * float(rng.uniform(0.3, 0.95))
            h.add(Observation(key, "COMPLETE", parent.val_accuracy * float(rng.uniform(0.9, 1.0)),
                              1 - params / BASE_PARAMS, params=params, round=r))
        s.observe(h, [])
    assert s.state_dict()["fitted_through"] == 2
    assert max(len(o.scheme) for o in h) >= 2  # it extends evaluated schemes


def test_steps_from_pr_when_params_are_unknown(space):
    ids = space.ids
    h = History(Observation((), "COMPLETE", 0.9, 0.0))
    h.add(Observation((ids[0],), "COMPLETE", 0.8, 0.5, round=0))
    h.add(Observation((ids[0], ids[1]), "COMPLETE", 0.6, 0.75, round=1))
    h.add(Observation((ids[2],), State.FAILED, round=1))
    (r0, a), (r1, b) = step_records(h, "t", TASK)
    assert (r0, a.parent, a.strategy) == (0, (), ids[0]) and (a.step_ar, a.step_pr) == pytest.approx((-1 / 9, 0.5))
    assert (r1, b.parent) == (1, (ids[0],)) and (b.step_ar, b.step_pr) == pytest.approx((-0.25, 0.5))
    s = ProgressiveStrategy(context(space))
    assert len(s.propose(h, 5, round_rng(0, 2))) == 5


def test_parents_are_open_schemes_on_the_front(space):
    """Parents are evaluated schemes that do not reach γ yet, from the front on (accuracy, share of γ): a scheme
    that reaches γ is never extended, one dominated by a better open scheme is not a parent."""
    def ns(v):
        return next(s for s in space.ids if s.startswith("NS(") and f"target_ratio_factor={v}," in s)

    h = History(Observation((), "COMPLETE", 0.9, 0.0, params=BASE_PARAMS))
    good_low, dominated, good_high, closed = (ns(0.3),), (ns(0.5),), (ns(0.7),), (ns(1.0),)
    for key, acc in ((good_low, 0.8), (dominated, 0.1), (good_high, 0.2), (closed, 0.95)):
        pr = 0.4 * space.share(key)
        h.add(Observation(key, "COMPLETE", acc, pr, params=BASE_PARAMS * (1 - pr), round=0))
    s = ProgressiveStrategy(context(space, options={"front_share": 1.0}))
    candidates = s._candidates(h, round_rng(0, 1), set())
    assert candidates and all(space.feasible(c) and not h.tried(c) for c in candidates)
    parents = {max((c[:i] for i in range(len(c)) if c[:i] in h), key=len) for c in candidates}
    assert parents == {(), good_low, good_high}


def test_candidates_are_drawn_method_first():
    """On the real catalogue (HOS is 65% of the strategies) a random first round spreads over the methods."""
    from collections import Counter

    from automc.search.space import SearchSpace

    real = SearchSpace()
    s = ProgressiveStrategy(Context(space=real, target_pr=0.4, seed=0, task_vector=TASK,
                                    options={"explore": 0.0}))
    h = History(Observation((), "COMPLETE", 0.9, 0.0, params=BASE_PARAMS))
    methods = Counter(real.strategy(p[0]).method for p in s.propose(h, 60, round_rng(0, 0)))
    # uniform over strategies would give about 39 HOS
    assert set(methods) == set(real.methods) - real.excluded and methods["HOS"] <= 20


def test_predictions_cover_every_step_a_proposal_evaluates(space):
    """A proposal with two new steps gets a prediction for each, chained from its longest evaluated prefix."""
    s = ProgressiveStrategy(context(space, 4, options={"ranking": "fmo"}))
    h = new_history(space)
    for r in range(2):
        run_round(s, h, space, 4, r)
    fresh = [space.close((sid,), np.random.default_rng(i)) for i, sid in enumerate(space.ids) if (sid,) not in h
             and not space.closed((sid,))][:3]  # two new steps each
    proposals = s.propose(h, 8, round_rng(4, 2)) + fresh
    predicted = s.predictions(h, proposals)
    walk = list(_walk(proposals, h))
    assert set(predicted) == set(walk) and all(k[:1] in predicted for k in fresh)
    for key in walk:
        p = predicted[key]
        assert p["ranked_by"] == "fmo" and p["step_ar"] is not None
        before = h.get(key[:-1]).val_accuracy if key[:-1] in h else predicted[key[:-1]]["val_accuracy"]
        assert p["val_accuracy"] == pytest.approx(before * (1 + p["step_ar"]), rel=1e-5)
