"""The search budget counts training compute (epoch-equivalents, ``compress.compute``), not steps: on a real store with
a tiny ResNet, two strategies spend the same compute, a resume continues from the stored compute, and a run stored
before compute was counted resumes counting steps."""

from __future__ import annotations

import json

import pytest

from automc.errors import ValidationError
from automc.kb import open_store
from automc.search import search
from automc.search._base import search_rows
from automc.search.study import open_study
from tests.search.test_study import config, write_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("compute-inputs"))


def _steps(cfg, run_id):
    with open_store(cfg.store) as s:
        return search_rows(s.run_evaluations(run_id))


def _check_spent_the_budget(steps, budget: float) -> float:
    """Every step records its compute; the run stops at the first step that reaches the budget (one worker)."""
    spent = [float(r["compute"]) for r in steps]
    assert all(c > 0 for c in spent)
    before_last = sum(spent[:-1])  # summed in the order the run added them up
    assert before_last < budget <= before_last + spent[-1]  # over by at most the last step
    return before_last + spent[-1]


@pytest.mark.slow
def test_two_strategies_with_one_compute_budget_spend_the_same_compute(inputs, tmp_path):
    budget = 4.0
    spent, costs, counts = {}, [], {}
    for strategy in ("random", "progressive"):
        cfg = config(inputs, tmp_path / strategy, strategy=strategy, budget=budget, max_steps=None, per_round=3)
        result = search(cfg)
        steps = _steps(cfg, result.run_id)
        spent[strategy] = _check_spent_the_budget(steps, budget)
        assert result.compute == pytest.approx(spent[strategy]) and result.budget_unit == "compute"
        costs += [float(r["compute"]) for r in steps]
        counts[strategy] = len(steps)
    assert abs(spent["random"] - spent["progressive"]) <= max(costs)  # the same compute, within one step's cost


def test_a_resumed_run_continues_from_its_stored_compute(inputs, tmp_path):
    cfg = config(inputs, tmp_path, budget=1.5, max_steps=None)
    first = search(cfg)
    before = _steps(cfg, first.run_id)
    stored = sum(float(r["compute"]) for r in before)
    assert stored == pytest.approx(first.compute) and stored >= 1.5
    study = open_study(config(inputs, tmp_path, resume=first.run_id, budget=3.0, max_steps=None, model=None,
                              data=None, weights=None))
    assert study.spent == pytest.approx(stored) and study.cfg.budget == 3.0
    with open_store(cfg.store) as s:  # give the run back: the resume below claims it again
        s.update_run(first.run_id, state="INTERRUPTED")
    second = search(config(inputs, tmp_path, resume=first.run_id, budget=3.0, max_steps=None, model=None, data=None,
                           weights=None))
    steps = _steps(cfg, first.run_id)
    assert [r["id"] for r in steps[:len(before)]] == [r["id"] for r in before]
    assert second.compute == pytest.approx(_check_spent_the_budget(steps, 3.0))
    # a budget below what was spent cannot be kept
    with pytest.raises(ValidationError, match="already spent") as e:
        open_study(config(inputs, tmp_path, resume=first.run_id, budget=1.0, max_steps=None, model=None, data=None,
                          weights=None))
    assert e.value.field == "--budget"


def test_a_run_stored_before_compute_was_counted_resumes_counting_steps(inputs, tmp_path):
    cfg = config(inputs, tmp_path, budget=1000.0, max_steps=2)
    run_id = search(cfg).run_id
    with open_store(cfg.store) as s:  # as an older automc stored it: an integer budget in steps, no unit
        run = s.load_run(run_id)
        old = {k: v for k, v in run.config["config"].items() if k not in ("budget_unit", "max_steps")}
        s.update_run(run_id, state="INTERRUPTED", budget=3, config={**run.config, "config": {**old, "budget": 3}})
    resumed = dict(resume=run_id, model=None, data=None, weights=None, budget=None, max_steps=None)
    study = open_study(config(inputs, tmp_path, **resumed))
    assert (study.cfg.budget_unit, study.cfg.budget, study.steps_allowed()) == ("steps", 3, 1)
    with open_store(cfg.store) as s:
        s.update_run(run_id, state="INTERRUPTED")
    result = search(config(inputs, tmp_path, **resumed))
    assert result.evaluations == 3 == len(_steps(cfg, run_id)) and result.budget_unit == "steps"
    with open_store(cfg.store) as s:
        stored = s.load_run(run_id).config["config"]
        s.update_run(run_id, state="INTERRUPTED")
    assert stored["budget_unit"] == "steps"  # recorded now: the next resume reads it
    with pytest.raises(ValidationError, match="whole number") as e:  # --budget keeps counting steps for this run
        open_study(config(inputs, tmp_path, **{**resumed, "budget": 4.5}))
    assert e.value.field == "--budget"
    assert search(config(inputs, tmp_path, **{**resumed, "budget": 4})).evaluations == 4


@pytest.mark.parametrize(("kw", "flag"), [
    ({"budget": 0}, "--budget"), ({"budget": -1.0}, "--budget"), ({"budget": float("nan")}, "--budget"),
    ({"budget": float("inf")}, "--budget"), ({"budget": "3"}, "--budget"), ({"budget": 1e9}, "--budget"),
    ({"max_steps": 0}, "--max-steps"), ({"max_steps": 2.5}, "--max-steps"), ({"max_steps": 10**9}, "--max-steps"),
])
def test_bad_budget_values_are_one_error_naming_the_flag(inputs, tmp_path, kw, flag):
    with pytest.raises(ValidationError) as e:
        search(config(inputs, tmp_path, **kw))
    assert e.value.field == flag
    assert not (tmp_path / "kb").exists()


def test_the_report_says_compute_spent_and_budget(inputs, tmp_path):
    from automc.search.report import build_report, render_markdown, to_json

    cfg = config(inputs, tmp_path, budget=1000.0, max_steps=2)
    result = search(cfg)
    with open_store(cfg.store) as s:
        info = build_report(s, result.run_id)
    assert result.compute > 0 and info.compute == pytest.approx(result.compute)
    text = render_markdown(info)
    assert f"budget: 1000 epoch-equivalents of search compute, at most 2 steps; spent {result.compute:.3g}" in text
    assert json.loads(json.dumps(to_json(info)))["compute"] == pytest.approx(result.compute)


def test_the_cli_shows_compute_spent_of_the_budget(inputs, tmp_path):
    from typer.testing import CliRunner

    from automc.cli.app import app
    from tests.cli.test_search_cli import _args

    r = CliRunner().invoke(app, _args(inputs, tmp_path, "--budget", "0.5"))
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if "epoch-equivalents of search compute" in x)
    spent = float(line.split("/")[0])
    assert spent >= 0.5 and line.startswith(f"{spent:.3g}/0.5 epoch-equivalents of search compute: ")
    assert "epoch-eq (" in r.stderr  # the live progress: spent/budget and steps
