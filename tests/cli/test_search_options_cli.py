"""``automc search --strategy-option KEY=VALUE``: listed by ``--help``, refused in one line before any work,
stored with the run and shown by ``automc runs``."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from automc.cli.app import app
from tests.cli.test_search_cli import _args, _runs
from tests.search.test_study import write_inputs

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("cli-option-inputs"))


def test_help_names_the_flag_and_how_to_list_each_strategys_options():
    r = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--strategy-option" in r.stdout and "'--strategy-option help' lists" in r.stdout
    r = runner.invoke(app, ["search", "--strategy-option", "help"])
    assert r.exit_code == 0, r.output
    for line in ("progressive:", "random: no options", "evolution:", "tpe:", "rl:"):
        assert line in r.stdout.splitlines()
    assert any(x.split()[:3] == ["candidates", "int", "≥"] and "default 300" in x for x in r.stdout.splitlines())
    r = runner.invoke(app, ["search", "--strategy", "evolution", "--strategy-option", "help"])
    assert r.exit_code == 0 and "population_size" in r.stdout and "candidates" not in r.stdout


@pytest.mark.parametrize(("options", "message"), [
    (["nope=1"], "error: --strategy-option: unknown option 'nope' for strategy random; it takes none"),
    (["--strategy", "progressive", "nope=1"],
     "error: --strategy-option: unknown option 'nope' for strategy progressive; it accepts candidates, explore"),
    (["--strategy", "progressive", "candidates=abc"],
     "error: --strategy-option: candidates (strategy progressive): expected an integer, got 'abc'"),
    (["--strategy", "progressive", "explore=1.5"],
     "error: --strategy-option: explore (strategy progressive): must be in [0, 1], got '1.5'"),
    (["--strategy", "rl", "rl_lr=0"], "error: --strategy-option: rl_lr (strategy rl): must be > 0"),
    (["candidates"], "error: --strategy-option: expected KEY=VALUE, got 'candidates'"),
    (["--strategy", "progressive", "candidates=1", "candidates=2"],
     "error: --strategy-option: candidates is given twice ('1' and '2')"),
])
def test_bad_option_is_one_error_line_and_writes_nothing(inputs, tmp_path, options, message):
    extra: list[str] = []
    for item in options:
        extra += [item] if item.startswith("--") or extra[-1:] == ["--strategy"] else ["--strategy-option", item]
    r = runner.invoke(app, _args(inputs, tmp_path, "--max-steps", "2", *extra))
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "kb").exists() or _runs(tmp_path) == []
    assert not (tmp_path / "cache").exists()


def test_option_is_stored_with_the_run_and_shown_by_runs(inputs, tmp_path):
    r = runner.invoke(app, _args(inputs, tmp_path, "--strategy", "progressive", "--max-steps", "2", "--per-round", "2",
                                 "--strategy-option", "candidates=1", "--strategy-option", "explore=0", "--json"))
    assert r.exit_code == 0, r.output
    run_id = json.loads(r.stdout)["run_id"]
    store = f"ladybug://{tmp_path / 'kb'}"
    r = runner.invoke(app, ["runs", "--store", store, "--json"])
    assert r.exit_code == 0, r.output
    assert [(x["id"], x["options"]) for x in json.loads(r.stdout)] == [(run_id, {"candidates": 1, "explore": 0.0})]
    r = runner.invoke(app, ["runs", "--store", store], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "candidates=1 explore=0.0" in r.stdout
