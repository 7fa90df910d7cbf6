"""``automc search`` / ``runs`` / ``report`` through the CLI, and a real process killed mid-run and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from automc.cli.app import app
from automc.kb import open_store
from automc.kb.states import State
from automc.search._base import search_rows
from tests.search.test_study import write_inputs

torch.set_num_threads(1)
runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("cli-inputs"))


def _args(inputs, tmp_path, *extra):
    data, weights = inputs
    return ["search", "--model", "resnet8", "--width", "4", "--weights", str(weights), "--data", str(data),
            "--target-pr", "0.4", "--budget", "1000", "--epochs", "0.3", "--final-epochs", "0", "--strategy", "random",
            "--no-reuse", "--per-round", "2", "--max-length", "2", "--batch-size", "32", "--lr", "0.05",
            "--device", "cpu",
            "--store", f"ladybug://{tmp_path / 'kb'}", "--cache-dir", str(tmp_path / "cache"), *extra]


def _runs(tmp_path):
    with open_store(f"ladybug://{tmp_path / 'kb'}") as s:
        return s.list_runs()


def test_search_json_runs_and_report_agree(inputs, tmp_path):
    r = runner.invoke(app, _args(inputs, tmp_path, "--max-steps", "3", "--json"))
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert set(obj) >= {"run_id", "front", "evaluations", "reuse", "seconds"}
    assert obj["evaluations"] == 3 and obj["reuse"] == {"evaluations": 0, "tasks": 0}
    for row in obj["front"]:
        assert set(row) >= {"scheme", "evaluation_id", "params", "pr", "flops", "fr", "val_accuracy",
                            "test_accuracy", "test_low", "test_high"}
        assert row["pr"] >= 0.4
    r = runner.invoke(app, ["runs", "--store", f"ladybug://{tmp_path / 'kb'}", "--json"])
    assert r.exit_code == 0, r.output
    runs = json.loads(r.stdout)
    assert [(x["id"], x["state"], x["evaluations"]) for x in runs] == [(obj["run_id"], "COMPLETE", 3)]
    out = tmp_path / "report"
    r = runner.invoke(app, ["report", obj["run_id"], "--store", f"ladybug://{tmp_path / 'kb'}", "--out", str(out),
                            "--json"])
    assert r.exit_code == 0, r.output
    rebuilt = json.loads(r.stdout)
    keys = ("scheme", "evaluation_id", "pr", "val_accuracy", "test_accuracy")
    assert [{k: x[k] for k in keys} for x in rebuilt["front"]] == [{k: x[k] for k in keys} for x in obj["front"]]
    assert (out / "report.md").is_file() and (out / "pareto.png").is_file() and (out / "search.json").is_file()
    r = runner.invoke(app, ["report", obj["run_id"], "--store", f"ladybug://{tmp_path / 'kb'}"])
    assert r.exit_code == 0 and "Pareto front" in r.stdout


@pytest.mark.parametrize(("change", "message"), [
    (["--target-pr", "1.5"], "--target-pr: must be in (0, 1)"),
    (["--budget", "0"], "--budget: must be more than 0"),
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--resume", "nope"], "no search run 'nope'"),
    (["--time-limit", "soon"], "--time-limit"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(inputs, tmp_path, change, message):
    open_store(f"ladybug://{tmp_path / 'kb'}").close()  # an existing, empty store
    r = runner.invoke(app, _args(inputs, tmp_path, "--max-steps", "2", *change))
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert _runs(tmp_path) == []


def test_resume_on_other_data_is_refused(inputs, tmp_path, tmp_path_factory):
    r = runner.invoke(app, _args(inputs, tmp_path, "--max-steps", "1", "--json"))
    assert r.exit_code == 0, r.output
    run_id = json.loads(r.stdout)["run_id"]
    other, _ = write_inputs(tmp_path_factory.mktemp("other-data"), seed=1)
    r = runner.invoke(app, ["search", "--resume", run_id, "--data", str(other), "--store",
                            f"ladybug://{tmp_path / 'kb'}"])
    assert r.exit_code == 1 and "was started with another data content" in r.stderr
    assert [x["id"] for x in _runs(tmp_path)] == [run_id]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_ends_with_the_budget(inputs, tmp_path):
    budget = 6
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from automc.cli.app import main; main()",
           *_args(inputs, tmp_path, "--max-steps", str(budget), "--json")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache = tmp_path / "cache" / "cache"
    deadline = time.monotonic() + 180
    try:
        while len(list(cache.glob("*.pt"))) < 2:  # two steps evaluated (each caches its model)
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run,) = _runs(tmp_path)
    assert run["state"] == State.RUNNING and run["evaluations"] < budget  # as the kill left it: opening writes nothing
    r = runner.invoke(app, ["search", "--resume", run["id"], "--store", f"ladybug://{tmp_path / 'kb'}", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["evaluations"] == budget
    with open_store(f"ladybug://{tmp_path / 'kb'}") as s:
        rows = s.run_evaluations(run["id"])
        assert s.load_run(run["id"]).state == "COMPLETE"
    counted = {r["id"] for r in search_rows(rows)}
    assert len(counted) == budget  # as many steps as an uninterrupted run of this budget
    assert budget <= len(rows) <= budget + 1  # at most the step in flight was lost (and is marked stale)
    assert all(r["state"] != "RUNNING" for r in rows)
    lost = [r for r in rows if r["id"] not in counted]
    assert all(r["state"] == State.INTERRUPTED and r["error"].startswith("stale") for r in lost)
