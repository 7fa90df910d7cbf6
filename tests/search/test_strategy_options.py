"""Strategy options: declared once per strategy, parsed by type, refused before any work, stored with the run,
reaching the strategy through ``Context.options`` (a real tiny search) and kept on resume."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from automc.errors import ValidationError
from automc.kb import open_store
from automc.search import STRATEGIES, SearchConfig, SearchInterrupted, search
from automc.search._base import Option, search_rows
from tests.search.test_study import config, write_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("option-inputs"))


def test_every_strategy_declares_typed_options_with_valid_defaults():
    for name in STRATEGIES:
        cls = STRATEGIES[name]
        for key, option in cls.OPTIONS.items():
            assert option.type in ("int", "float", "bool", "str", "choice") and option.help, (name, key)
            if option.default is not None:  # a declared default passes its own checks
                assert cls.parse_options({key: option.default}) == {key: option.default}


@pytest.mark.parametrize(("option", "text", "value"), [
    (Option("int", 1, "n", low=1), "12", 12),
    (Option("int", 1, "n", low=1), " 3 ", 3),
    (Option("float", 0.5, "share", low=0, high=1), "1e-1", 0.1),
    (Option("float", 0.5, "share", low=0, high=1), 1, 1.0),
    (Option("bool", False, "flag"), "Yes", True),
    (Option("bool", True, "flag"), "0", False),
    (Option("str", "a", "name"), "x=y", "x=y"),
    (Option("choice", "adam", "optimiser", choices=("adam", "sgd")), "sgd", "sgd"),
])
def test_values_are_parsed_by_the_declared_type(option, text, value):
    got = option.parse(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("option", "text", "message"), [
    (Option("int", 1, "n", low=1), "abc", "expected an integer, got 'abc'"),
    (Option("int", 1, "n", low=1), "1.5", "expected an integer"),
    (Option("int", 1, "n", low=1), "__import__('os')", "expected an integer"),  # parsed, never evaluated
    (Option("int", 1, "n", low=1), True, "expected an integer"),
    (Option("int", 1, "n", low=1), "0", "must be ≥ 1, got '0'"),
    (Option("float", 0.5, "share", low=0, high=1), "1.01", "must be in [0, 1]"),
    (Option("float", 0.5, "share", low=0, high=1), "nan", "expected a number"),
    (Option("float", 0.05, "lr", above=0), "0", "must be > 0"),
    (Option("bool", False, "flag"), "maybe", "expected true or false"),
    (Option("choice", "adam", "optimiser", choices=("adam", "sgd")), "rmsprop", "expected one of adam, sgd"),
])
def test_bad_values_are_refused_saying_what_was_expected(option, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        option.parse(text)


def test_parse_options_names_the_key_the_strategy_and_the_accepted_keys():
    progressive = STRATEGIES["progressive"]
    with pytest.raises(ValueError, match=r"unknown option 'population_size' for strategy progressive; it accepts "
                                         r"candidates, explore, fit_steps, "):
        progressive.parse_options({"population_size": "4"})
    with pytest.raises(ValueError, match=r"unknown option 'x' for strategy random; it takes none"):
        STRATEGIES["random"].parse_options({"x": "1"})
    with pytest.raises(ValueError, match=r"candidates \(strategy progressive\): must be ≥ 1, got '0'"):
        progressive.parse_options({"candidates": "0"})
    assert progressive.parse_options({"explore": "0.5", "candidates": "7"}) == {"candidates": 7, "explore": 0.5}


@pytest.mark.parametrize(("options", "message"), [
    ({"nope": "1"}, "--strategy-option: unknown option 'nope' for strategy progressive; it accepts candidates"),
    ({"candidates": "many"}, "--strategy-option: candidates (strategy progressive): expected an integer"),
    ({"explore": "2"}, "--strategy-option: explore (strategy progressive): must be in [0, 1]"),
])
def test_bad_options_are_refused_before_any_work(inputs, tmp_path, options, message):
    cfg = config(inputs, tmp_path, strategy="progressive", strategy_options=options)
    open_store(cfg.store).close()  # an existing, empty store
    with pytest.raises(ValidationError, match=re.escape(message)):
        search(cfg)
    with open_store(cfg.store) as s:
        assert s.list_runs() == []
    assert not (tmp_path / "cache").exists()


def _steps_per_round(cfg: SearchConfig, run_id: str) -> list[int]:
    with open_store(cfg.store) as s:
        rows = search_rows(s.run_evaluations(run_id))
    rounds = [int(r["round"]) for r in rows]
    return [rounds.count(r) for r in sorted(set(rounds))]


def test_an_option_reaches_the_strategy_stored_with_the_run(inputs, tmp_path):
    # progressive's ``candidates`` caps the candidate schemes scored per round: with one, a round of three
    # proposals can only propose one scheme (one step each: with --max-length 1 every proposal is one step)
    plain = search(config(inputs, tmp_path, strategy="progressive", max_steps=3, per_round=3, max_length=1))
    capped_cfg = config(inputs, tmp_path, strategy="progressive", max_steps=3, per_round=3, max_length=1,
                        cache_dir=str(tmp_path / "cache2"), strategy_options={"candidates": "1"})
    capped = search(capped_cfg)
    assert _steps_per_round(capped_cfg, plain.run_id) == [3]
    assert _steps_per_round(capped_cfg, capped.run_id) == [1, 1, 1]
    with open_store(capped_cfg.store) as s:
        runs = {r["id"]: r for r in s.list_runs()}
        stored = s.load_run(capped.run_id).config
    assert runs[capped.run_id]["options"] == {"candidates": 1} and runs[plain.run_id]["options"] == {}
    assert stored["config"]["strategy_options"] == {"candidates": 1}  # typed, as declared
    assert stored["identity"]["strategy_options"] == {"candidates": 1}


@pytest.mark.slow
def test_resume_keeps_the_stored_options_and_refuses_other_ones(inputs, tmp_path):
    # one scheme per round while ``candidates=1`` holds; with the default, round 2 would take the 2 steps left
    cfg = config(inputs, tmp_path, strategy="progressive", max_steps=4, per_round=3, max_length=1,
                 strategy_options={"candidates": "1"})

    def stop_after(round_):
        def stop(event):
            if event.kind == "round" and event.round == round_:  # the round's strategy state is stored
                raise KeyboardInterrupt
        return stop

    with pytest.raises(SearchInterrupted) as info:
        search(cfg, progress=stop_after(0))
    run_id = info.value.run_id
    resume = SearchConfig(resume=run_id, store=cfg.store, device="cpu")
    for other, message in (({"candidates": "2"}, "was started with another strategy-options value"),
                           ({"explore": "0.5"}, "was started with another strategy-options value"),
                           ({"nope": "1"}, "unknown option 'nope' for strategy progressive")):
        with pytest.raises(ValidationError, match=message):
            search(dataclasses.replace(resume, strategy_options=other))
    with pytest.raises(SearchInterrupted):  # repeating the stored value is no change
        search(dataclasses.replace(resume, strategy_options={"candidates": "1"}), progress=stop_after(1))
    assert _steps_per_round(cfg, run_id) == [1, 1]
    result = search(resume)  # none given: the stored ones
    assert result.evaluations == 4
    assert _steps_per_round(cfg, run_id) == [1, 1, 1, 1]
    with open_store(cfg.store) as s:
        run = s.load_run(run_id)
        assert run.state == "COMPLETE" and run.config["config"]["strategy_options"] == {"candidates": 1}
        assert [r["options"] for r in s.list_runs()] == [{"candidates": 1}]
