"""``automc search`` under races and kills, with real processes and a real store: one owner per run, budgets that
cannot shrink below what is done, wall time across sessions, the exported model equal to the reported one, and a
Ctrl-C that a library swallows."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from automc.compress.data import load_data
from automc.compress.saving import load_compressed, load_standalone
from automc.compress.train import evaluate
from automc.kb import open_store
from automc.kb.states import State
from automc.search._base import search_rows
from tests.search.test_study import write_inputs

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
MAIN = "from automc.cli.app import main; main()"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("rel-inputs"))


def store_uri(tmp_path: Path) -> str:
    return f"ladybug://{tmp_path / 'kb'}"


def search_args(inputs, tmp_path: Path, *extra: str) -> list[str]:
    data, weights = inputs
    return ["search", "--model", "resnet8", "--width", "4", "--weights", str(weights), "--data", str(data),
            "--target-pr", "0.4", "--budget", "1000", "--epochs", "0.3", "--final-epochs", "0", "--strategy", "random",
            "--no-reuse", "--per-round", "2", "--max-length", "2", "--batch-size", "32", "--lr", "0.05",
            "--device", "cpu",
            "--store", store_uri(tmp_path), "--cache-dir", str(tmp_path / "cache"), *extra]


def cli(*args: str, prelude: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", prelude + MAIN, *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def popen(*args: str, prelude: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", prelude + MAIN, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by ``popen`` and everything it started (it may have ended already)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for(cond, proc: subprocess.Popen | None = None, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def rows(tmp_path: Path, run_id: str) -> list[dict]:
    with open_store(store_uri(tmp_path), read_only=True) as s:
        return s.run_evaluations(run_id)


def run_record(tmp_path: Path, run_id: str):
    with open_store(store_uri(tmp_path), read_only=True) as s:
        return s.load_run(run_id)


def one_run(tmp_path: Path) -> str:
    with open_store(store_uri(tmp_path), read_only=True) as s:
        (run,) = s.list_runs()
    return run["id"]


def assert_clean(tmp_path: Path, run_id: str, budget: int) -> None:
    """Exactly the budget of counted steps, no scheme counted twice, nothing left RUNNING."""
    all_rows = rows(tmp_path, run_id)
    steps = search_rows(all_rows)
    assert len(steps) == budget
    assert len({r["scheme"] for r in steps}) == budget
    assert all(r["state"] != "RUNNING" for r in all_rows)


def exported_matches_report(inputs, out: Path) -> None:
    """The exported model is the reported best one: same evaluation, and it measures the reported accuracy."""
    report = json.loads((out / "search.json").read_text())
    rows = report["ranked"] or report["front"]  # the schemes meeting the targets (report.best_row's rule)
    best = [r for r in rows if r["fidelity"] == "final"] or rows
    best = max(best, key=lambda r: (r["val_accuracy"] or 0.0, r["pr"] or 0.0))
    arch = json.loads((out / "model" / "architecture.json").read_text())
    assert arch["extra"]["evaluation_id"] == best["evaluation_id"]
    load_standalone(out / "model" / arch["standalone"])
    model = load_compressed(out / "model")
    data = load_data(str(inputs[0]), val_from="test", fraction=1.0, seed=0, device="cpu")
    assert evaluate(model, data, "val").top1 == best["val_accuracy"]


# -- one owner per run ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_resumes_of_one_run_one_is_refused(inputs, tmp_path):
    r = cli(*search_args(inputs, tmp_path, "--max-steps", "1", "--json"))
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    budget = 6
    resume = ("search", "--resume", run_id, "--max-steps", str(budget), "--store", store_uri(tmp_path), "--json")
    procs = [popen(*resume)]
    time.sleep(1.0)  # a second apart: neither has loaded its data yet
    procs.append(popen(*resume))
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    line = _one_error_line(outs[loser][1])
    assert "in use by process" in line and str(procs[winner].pid) in line
    assert json.loads(outs[winner][0])["evaluations"] == budget
    assert_clean(tmp_path, run_id, budget)


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def test_claim_is_atomic_in_the_store(inputs, tmp_path):
    """A claimed run cannot be claimed by another live process; a dead owner's run can."""
    r = cli(*search_args(inputs, tmp_path, "--max-steps", "1", "--json"))
    run_id = json.loads(r.stdout)["run_id"]
    holder = subprocess.Popen([sys.executable, "-c", "import sys; "
                               "from automc.kb import open_store; "
                               f"s = open_store({store_uri(tmp_path)!r}); s.claim_run({run_id!r}); "
                               "s.close(); print('claimed', flush=True); sys.stdin.read()"],
                              env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with open_store(store_uri(tmp_path)) as s, pytest.raises(ValueError, match="in use by process"):
            s.claim_run(run_id)
    finally:
        holder.stdin.close()
        holder.wait()
    with open_store(store_uri(tmp_path)) as s:  # the holder is gone: its claim is stale
        s.claim_run(run_id)
        assert s.load_run(run_id).pid == os.getpid()


# -- budgets and time ----------------------------------------------------------------------------------------

def test_resume_with_a_budget_below_the_steps_done_is_refused(inputs, tmp_path):
    r = cli(*search_args(inputs, tmp_path, "--max-steps", "3", "--json"))
    run_id = json.loads(r.stdout)["run_id"]
    r = cli("search", "--resume", run_id, "--max-steps", "2", "--store", store_uri(tmp_path))
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --max-steps:") and "already evaluated 3 steps" in lines[0]
    run = run_record(tmp_path, run_id)
    assert (run.state, run.budget) == ("COMPLETE", 3)


@pytest.mark.slow
def test_seconds_accumulate_across_a_killed_session(inputs, tmp_path):
    budget = 6
    proc = popen(*search_args(inputs, tmp_path, "--max-steps", str(budget)))
    try:
        wait_for(lambda: len(list((tmp_path / "cache" / "cache").glob("*.pt"))) >= 3, proc)
        time.sleep(0.5)
    finally:
        kill_group(proc)
    run_id = one_run(tmp_path)
    killed = run_record(tmp_path, run_id)
    setup = float(killed.config["setup_seconds"])
    assert killed.seconds > setup  # the killed session's steps are counted
    r = cli("search", "--resume", run_id, "--store", store_uri(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["seconds"] > killed.seconds and result["seconds"] > result["setup_seconds"]
    assert_clean(tmp_path, run_id, budget)


# -- the exported model is the reported one ------------------------------------------------------------------

@pytest.mark.slow
def test_resume_of_a_complete_run_into_a_new_out_exports_the_reported_model(inputs, tmp_path):
    r = cli(*search_args(inputs, tmp_path, "--max-steps", "3", "--final-epochs", "0.3", "--top-k", "1", "--out",
                         str(tmp_path / "out1"), "--json"))
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    exported_matches_report(inputs, tmp_path / "out1")
    assert not (tmp_path / "cache" / "cache").exists()  # the model cache is gone: the export must be rebuilt
    r = cli("search", "--resume", run_id, "--store", store_uri(tmp_path), "--out", str(tmp_path / "out2"),
            "--json")
    assert r.returncode == 0, r.stderr
    front = json.loads(r.stdout)["front"]
    assert any(row["fidelity"] == "final" for row in front)
    exported_matches_report(inputs, tmp_path / "out2")
    same = [json.loads((tmp_path / d / "model" / "architecture.json").read_text())["extra"] for d in ("out1", "out2")]
    assert same[0] == same[1]
    assert_clean(tmp_path, run_id, 3)


# SIGKILL during the export: tests/cli/test_search_sweep.py::test_sigkill_at_each_phase_resumes_to_the_budget


# -- Ctrl-C ------------------------------------------------------------------------------------------------

# Sends SIGINT to this process from inside Torch-Pruning's tracing forward, once: the KeyboardInterrupt is raised
# inside ``build_dependency``'s bare ``except`` (what a user's Ctrl-C landing there does).
CTRL_C_IN_TRACING = """
import os, signal, torch_pruning as tp
_build = tp.DependencyGraph.build_dependency
def _build_with_ctrl_c(self, model, *a, **k):
    if not os.path.exists(os.environ["MARK"]):
        def pre(m, inp):
            if not os.path.exists(os.environ["MARK"]):
                open(os.environ["MARK"], "w").close()
                os.kill(os.getpid(), signal.SIGINT)
        h = model.register_forward_pre_hook(pre)
        try:
            return _build(self, model, *a, **k)
        finally:
            h.remove()
    return _build(self, model, *a, **k)
tp.DependencyGraph.build_dependency = _build_with_ctrl_c
"""


@pytest.mark.slow
def test_ctrl_c_inside_torch_pruning_tracing_stops_the_run(inputs, tmp_path):
    mark = tmp_path / "ctrl-c-sent"
    budget = 8
    r = subprocess.run([sys.executable, "-c", CTRL_C_IN_TRACING + MAIN,
                        *search_args(inputs, tmp_path, "--max-steps", str(budget), "--seed", "1")],
                       env={**ENV, "MARK": str(mark)}, capture_output=True, text=True, timeout=600)
    assert mark.exists(), "no step traced a model with Torch-Pruning"
    assert r.returncode == 130, r.stderr
    run_id = one_run(tmp_path)
    assert run_record(tmp_path, run_id).state == "INTERRUPTED"
    all_rows = rows(tmp_path, run_id)
    assert len(search_rows(all_rows)) < budget
    # the step it landed in is INTERRUPTED: evaluated again on resume
    assert any(x["state"] == State.INTERRUPTED for x in all_rows)
    r = cli("search", "--resume", run_id, "--store", store_uri(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert_clean(tmp_path, run_id, budget)
