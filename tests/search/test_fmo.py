"""F_mo earns its place: every prediction is stored with its evaluation (validation accuracy only), each round's
rank correlation is measured on steps F_mo was not fitted on yet, and the ranking falls back to the prior when the
prior ranks better."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from automc.catalog import scheme_key
from automc.kb import open_store
from automc.kb.states import State
from automc.search import search
from automc.search._base import History, Observation, round_rng
from automc.search.progressive import ProgressiveStrategy, prior_ar, step_records
from automc.search.report import build_report, render_markdown
from tests.search.test_progressive import TASK, context, new_history, run_round, small_space
from tests.search.test_study import config, write_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def space():
    return small_space()


# -- stored with the evaluations (real search, real store) --------------------------------------------------------

@pytest.fixture(scope="module")
def progressive_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmo")
    inputs = write_inputs(d, seed=1)
    cfg = config(inputs, d, strategy="progressive", max_steps=8, per_round=4, epochs=0.1, seed=3, max_length=1,
                 strategy_options={"candidates": 40, "fit_steps": 100, "patience": 20})
    result = search(cfg)
    with open_store(cfg.store) as s:
        rows = s.query("MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(:SearchRun {id: $r}) MATCH (e)-[:EVAL_OF_SCHEME]->"
                       "(x:Scheme) RETURN e.id AS id, x.text AS scheme, e.round AS round, e.state AS state, "
                       "e.fidelity AS fidelity, e.val_accuracy AS val_accuracy, e.accuracy AS accuracy, "
                       "e.step_ar AS step_ar, e.prediction AS prediction", {"r": result.run_id})
        info = build_report(s, result.run_id)
    return result, [r for r in rows if r["fidelity"] == "search"], info


@pytest.mark.slow
def test_predictions_are_stored_from_validation_accuracy_only(progressive_run):
    result, rows, info = progressive_run
    by_scheme = {scheme_key(r["scheme"]): r for r in rows}
    base_val = float(info.base["val_accuracy"])
    assert [r for r in rows if r["round"] == 0] and all(r["prediction"] is None for r in rows if r["round"] == 0)
    later = [r for r in rows if r["round"] == 1]
    assert later
    for r in later:  # every step of round 1 was proposed directly (its parent was evaluated in round 0)
        p = json.loads(r["prediction"])
        assert set(p) == {"step_ar", "prior_ar", "ranked_by", "val_accuracy"}
        assert p["ranked_by"] in ("fmo", "prior")
        key = scheme_key(r["scheme"])
        parent_val = base_val if len(key) == 1 else by_scheme[key[:-1]]["val_accuracy"]
        used = p["prior_ar"] if p["ranked_by"] == "prior" else p["step_ar"]
        # the expected accuracy is the parent's *validation* accuracy times the predicted change
        assert p["val_accuracy"] == pytest.approx(parent_val * (1 + used))
    assert all(r["accuracy"] is None for r in rows)  # no test accuracy exists for a search step to leak from


@pytest.mark.slow
def test_round_correlation_is_of_the_stored_predictions_and_is_reported(progressive_run):
    result, rows, info = progressive_run
    quality = {q["round"]: q for q in info.run.strategy_state["quality"]}
    assert result.learnt["quality"] == info.run.strategy_state["quality"]
    assert quality[0]["ranking"] == "random" and quality[0]["fmo"] is None  # nothing learnt before round 0
    done = [r for r in rows if r["round"] == 1 and r["state"] == State.COMPLETE]
    assert quality[1]["steps"] == len(done)
    # the correlation recorded after round 1 is that of the predictions written before its steps ran
    predicted = [json.loads(r["prediction"])["step_ar"] for r in done]
    observed = [r["step_ar"] for r in done]
    assert len(done) >= 3 and quality[1]["fmo"] is not None  # measurable on this seed
    assert quality[1]["fmo"] == pytest.approx(spearmanr(predicted, observed).statistic, abs=1e-6)
    text = render_markdown(info)
    assert "## Predictions (F_mo)" in text and "- round 1:" in text


# -- measured before fitting -------------------------------------------------------------------------------------

def test_correlation_is_measured_on_steps_not_yet_fitted(space):
    """Each round's recorded correlation is what F_mo, fitted on the earlier rounds only, scores on that round's
    steps: a replica trained on the history up to the round before reproduces it."""
    seed = 2
    s = ProgressiveStrategy(context(space, seed))
    h = new_history(space)
    for r in range(4):
        run_round(s, h, space, seed, r)
    records = step_records(h, "this-task", TASK)
    measured = [q for q in s.quality if q["fmo"] is not None]
    assert [q["round"] for q in s.quality] == [0, 1, 2, 3] and len(measured) == 3
    for q in measured:
        r = q["round"]
        new = [rec for k, rec in records if k == r]
        assert q["steps"] == len(new)
        replica = ProgressiveStrategy(context(space, seed))
        replica._catch_up(History(h.base, [o for o in h if o.round < r]))  # fitted through round r-1
        assert replica._fitted_through == r - 1 and not any(replica.predictor.has_seen(rec) for rec in new)
        pred = replica.predictor.predict([rec.parent for rec in new], [rec.strategy for rec in new], TASK)
        assert q["fmo"] == pytest.approx(spearmanr(pred, [rec.step_ar for rec in new]).statistic, abs=1e-6)
    # after the round is measured it is fitted: the measure never saw its own targets
    assert all(s.predictor.has_seen(rec) for _, rec in records)


# -- the fallback to the prior -----------------------------------------------------------------------------------

LOSS = {"NS": 0.05, "SFP": 0.12, "LFB": 0.01}


def method_only(space, scheme, round_):
    """A step costs a fixed share of accuracy by method alone: the per-method prior is exact."""
    acc, params = 0.9, 1000.0
    for sid in scheme:
        acc *= 1 - LOSS[space.strategy(sid).method]
        params *= 0.7
    return Observation(tuple(scheme), "COMPLETE", acc, 1 - params / 1000.0, None, params, None, round_,
                       f"e-{'|'.join(scheme)}")


def test_ranking_falls_back_to_the_prior_when_it_correlates_better(space, monkeypatch):
    """F_mo starved (one optimiser step a round) against an exact prior: after the first measured round the
    strategy ranks by the prior, and its stored predictions say so."""
    import tests.search.test_progressive as tp

    monkeypatch.setattr(tp, "observe", method_only)
    seed = 4
    s = ProgressiveStrategy(context(space, seed, options={"fit_steps": 1, "patience": 1}))
    h = History(method_only(space, (), 0))
    for r in range(4):
        run_round(s, h, space, seed, r)
    both = [q for q in s.quality if q["fmo"] is not None and q["prior"] is not None]
    assert both and all(q["prior"] > q["fmo"] for q in both)
    assert both[0]["prior"] > 0.8  # exact up to float noise inside a method
    assert [q["ranking"] for q in s.quality] == ["random", "fmo", "prior", "prior"]
    proposals = s.propose(h, 10, round_rng(seed, 4))
    preds = s.predictions(h, proposals)
    assert preds and all(p["ranked_by"] == "prior" for p in preds.values())
    for key, p in preds.items():
        assert p["val_accuracy"] == pytest.approx(h.get(key[:-1]).val_accuracy * (1 + p["prior_ar"]))
        assert p["prior_ar"] == pytest.approx(-LOSS[space.strategy(key[-1]).method])


@pytest.mark.parametrize(("fmo", "prior", "expected"), [(0.2, 0.6, "prior"), (0.6, 0.2, "fmo"), (None, 0.9, "fmo")])
def test_the_rule_compares_the_latest_measured_rounds(space, fmo, prior, expected):
    s = ProgressiveStrategy(context(space, options={"quality_rounds": 2}))
    h = new_history(space)
    run_round(s, h, space, 0, 0)  # F_mo has learnt something
    s.quality = [{"round": 0, "steps": 9, "fmo": 0.9, "prior": -0.9, "ranking": "random"},  # outside the window
                 {"round": 1, "steps": 9, "fmo": fmo, "prior": prior, "ranking": "fmo"},
                 {"round": 2, "steps": 9, "fmo": fmo, "prior": prior, "ranking": "fmo"}]
    assert s._ranking() == expected


@pytest.mark.parametrize("ranking", ["prior", "random", "fmo"])
def test_ablation_rankings_are_used_as_asked(space, ranking):
    s = ProgressiveStrategy(context(space, options={"ranking": ranking}))
    h = new_history(space)
    run_round(s, h, space, 0, 0)
    proposals = s.propose(h, 6, round_rng(0, 1))
    assert {p["ranked_by"] for p in s.predictions(h, proposals).values()} == {ranking}


def test_prior_is_the_strategy_mean_else_the_method_mean():
    from automc.search._base import StepRecord

    recs = [StepRecord((), "NS(a=1)", "t", TASK, -0.1, 0.1), StepRecord((), "NS(a=1)", "t", TASK, -0.3, 0.1),
            StepRecord((), "NS(a=2)", "t", TASK, -0.5, 0.1), StepRecord((), "SFP(a=1)", "t", TASK, -0.9, 0.1)]
    got = prior_ar(recs, ["NS(a=1)", "NS(a=3)", "SFP(a=2)", "LFB(a=1)"])
    np.testing.assert_allclose(got, [-0.2, -0.3, -0.9, -0.45])
    assert prior_ar([], ["NS(a=1)"]).tolist() == [0.0]


def test_resume_rebuilds_the_same_measures(space):
    """The per-round measures come back on resume from the history alone (any order), as stored."""
    seed = 6
    s = ProgressiveStrategy(context(space, seed))
    h = new_history(space)
    for r in range(3):
        run_round(s, h, space, seed, r)
    stored = json.loads(json.dumps(s.state_dict()))
    shuffled = list(h.observations)
    np.random.default_rng(1).shuffle(shuffled)
    rebuilt = ProgressiveStrategy(context(space, seed))
    rebuilt.load_state_dict(stored)
    again = History(h.base, shuffled)
    proposals = rebuilt.propose(again, 10, round_rng(seed, 3))
    assert rebuilt.quality == stored["quality"] and len(stored["quality"]) == 3
    assert proposals == s.propose(h, 10, round_rng(seed, 3))
    assert rebuilt.predictions(again, proposals) == s.predictions(h, proposals)
