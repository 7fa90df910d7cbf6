"""A careless and a hostile user against ``automc search``: bad flags and paths, kills at each phase, hostile and
missing cache files. Each refusal is one ``error:`` line, exit != 0 and nothing written; each kill resumes to
exactly the budget with no scheme counted twice, nothing left RUNNING and the exported model equal to the
reported one. Real processes, a real store, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automc.cli.app import app
from automc.kb import open_store
from automc.kb.states import State
from automc.search._base import search_rows
from tests.cli.test_search_reliability import (
    assert_clean,
    cli,
    exported_matches_report,
    kill_group,
    one_run,
    popen,
    run_record,
    search_args,
    store_uri,
    wait_for,
)
from tests.search.test_study import write_inputs

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("sweep-inputs"))


@pytest.fixture(scope="module")
def done_run(inputs, tmp_path_factory):
    """A COMPLETE run of 2 steps (the base of the resume cases), its store copied per test."""
    d = tmp_path_factory.mktemp("sweep-done")
    r = runner.invoke(app, search_args(inputs, d, "--max-steps", "2", "--json"))
    assert r.exit_code == 0, r.output
    return d, json.loads(r.stdout)["run_id"]


def _copy_store(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.name.startswith("kb"):
            (dst / f.name).write_bytes(f.read_bytes())


def _runs(tmp_path: Path) -> list[dict]:
    if not (tmp_path / "kb").exists():
        return []
    with open_store(store_uri(tmp_path), read_only=True) as s:
        return s.list_runs()


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


# -- refused before any work ---------------------------------------------------------------------------------

def _file(tmp_path: Path) -> str:
    p = tmp_path / "a-file"
    p.write_text("x")
    return str(p)


NEW_RUN_REFUSALS = [
    (["--budget", "0"], "--budget"),
    (["--budget", "-3"], "--budget"),
    (["--budget", "1000000000"], "--budget"),
    (["--budget", "9223372036854775807"], "--budget"),
    (["--target-pr", "0"], "--target-pr"),
    (["--target-pr", "1"], "--target-pr"),
    (["--target-pr", "nan"], "--target-pr"),
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "inf"], "--epochs"),
    (["--final-epochs", "nan"], "--final-epochs"),
    (["--data-fraction", "0"], "--data-fraction"),
    (["--per-round", "0"], "--per-round"),
    (["--max-length", "0"], "--max-length"),
    (["--top-k", "-1"], "--top-k"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--strategy", "nope"], "--strategy"),
    (["--time-limit", "0"], "--time-limit"),
    (["--time-limit", "soon"], "--time-limit"),
    (["--val-from", "elsewhere"], "--val-from"),
    (["--device", "tpu"], "--device"),
    (["--workers", "0"], "--workers"),
    (["--workers", "2", "--gpus-per-worker", "1"], "GPU"),
    (["--resume", "nope"], "no knowledge base at"),
    (["--out", "{file}"], "--out"),
    (["--out", "{file}/sub"], "--out"),
    (["--cache-dir", "{file}"], "--cache-dir"),
    (["--weights", "{tmp}/missing.pt"], "missing.pt"),
    (["--val-data", "{tmp}/missing.npz"], "missing.npz"),
]


@pytest.mark.parametrize(("extra", "fragment"), NEW_RUN_REFUSALS, ids=[" ".join(e) for e, _ in NEW_RUN_REFUSALS])
def test_refused_with_one_line_and_nothing_written(inputs, tmp_path, extra, fragment):
    extra = [e.format(file=_file(tmp_path), tmp=tmp_path) for e in extra]
    r = runner.invoke(app, search_args(inputs, tmp_path, "--max-steps", "2", *extra))
    assert r.exit_code not in (0, None), r.output
    assert fragment in _one_error_line(r.stderr)
    assert _runs(tmp_path) == []
    assert not (tmp_path / "cache").exists()


def test_out_on_a_read_only_file_system_is_refused(inputs, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (not root)")
    try:
        for flag in ("--out", "--cache-dir"):
            r = runner.invoke(app, search_args(inputs, tmp_path, "--max-steps", "2", flag, str(ro / "x")))
            assert r.exit_code == 1 and flag in _one_error_line(r.stderr)
            assert _runs(tmp_path) == []
    finally:
        subprocess.run(["umount", str(ro)], check=False)


RESUME_REFUSALS = [
    (["--max-steps", "1"], "--max-steps"),
    (["--budget", "0"], "--budget"),
    (["--data", "{other}"], "another data content"),
    (["--seed", "7"], "another seed"),
    (["--target-pr", "0.5"], "another target-pr"),
    (["--out", "{file}"], "--out"),
]


@pytest.mark.parametrize(("extra", "fragment"), RESUME_REFUSALS, ids=[" ".join(e) for e, _ in RESUME_REFUSALS])
def test_resume_refused_leaves_the_run_as_it_was(inputs, done_run, tmp_path, tmp_path_factory, extra, fragment):
    src, run_id = done_run
    _copy_store(src, tmp_path)
    other = str(write_inputs(tmp_path_factory.mktemp("other"), seed=1)[0]) if "{other}" in extra else ""
    extra = [e.format(file=_file(tmp_path), other=other) for e in extra]
    r = runner.invoke(app, ["search", "--resume", run_id, "--store", store_uri(tmp_path), *extra])
    assert r.exit_code == 1
    assert fragment in _one_error_line(r.stderr)
    run = run_record(tmp_path, run_id)
    assert (run.state, run.budget) == ("COMPLETE", 2)
    assert_clean(tmp_path, run_id, 2)


# -- kills at each phase ---------------------------------------------------------------------------------------

def _final_running(tmp_path: Path) -> bool:
    try:
        with open_store(store_uri(tmp_path), read_only=True) as s:
            return bool(s.query("MATCH (e:Evaluation) WHERE e.state = $s AND e.fidelity = $f RETURN e.id AS id",
                                {"s": "RUNNING", "f": "final"}))
    except Exception:  # noqa: BLE001 - the store is being written: look again
        return False


PHASES = {
    "mid-step": lambda t: len(list((t / "cache" / "cache").glob("*.pt"))) >= 2,
    "final fine-tune": _final_running,
    "export": lambda t: any((t / "out").glob(".model.tmp-*/state_dict.pt")),
    "report": lambda t: (t / "out" / "model" / "architecture.json").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
def test_sigkill_at_each_phase_resumes_to_the_budget(inputs, tmp_path, phase):
    budget = 4
    final = "2" if phase == "final fine-tune" else "0.3"  # long enough to be seen RUNNING in the store
    proc = popen(*search_args(inputs, tmp_path, "--max-steps", str(budget), "--final-epochs", final, "--top-k", "1",
                              "--out", str(tmp_path / "out")))
    try:
        wait_for(lambda: PHASES[phase](tmp_path), proc, limit=600)
    finally:
        kill_group(proc)
    run_id = one_run(tmp_path)
    if phase == "export":  # COMPLETE only once the exported model loads; a half-written one is never in place
        assert run_record(tmp_path, run_id).state != "COMPLETE"
        assert not (tmp_path / "out" / "model").exists()
    r = cli("search", "--resume", run_id, "--store", store_uri(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["evaluations"] == budget
    assert run_record(tmp_path, run_id).state == "COMPLETE"
    assert_clean(tmp_path, run_id, budget)
    exported_matches_report(inputs, tmp_path / "out")
    assert not list((tmp_path / "out").glob(".model.*"))  # a killed export's temporary folder is gone


# -- hostile and missing cache files ----------------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _poison(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(_Payload()))


HOSTILE = [
    _poison,
    lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]),  # truncated
    lambda p: p.write_bytes(b""),
    lambda p: (p.unlink(), p.mkdir()),  # a directory in its place
    lambda p: p.unlink(),
]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["entries", "folder"])
def test_hostile_or_missing_cache_is_rebuilt_not_blamed(inputs, tmp_path, how, monkeypatch):
    """Entries replaced by a pickle payload, truncated, emptied, turned into a directory or deleted (one kind each),
    or the whole cache folder deleted, between a kill and the resume."""
    monkeypatch.chdir(tmp_path)  # where the payload would write its file
    budget = 6
    proc = popen(*search_args(inputs, tmp_path, "--max-steps", str(budget), "--per-round", "3"))
    cache = tmp_path / "cache" / "cache"
    try:
        wait_for(lambda: len(list(cache.glob("*.pt"))) >= 3, proc)
    finally:
        kill_group(proc)
    if how == "folder":
        shutil.rmtree(cache)
    else:
        for entry, spoil in zip(sorted(cache.glob("*.pt")), HOSTILE, strict=False):
            spoil(entry)
    run_id = one_run(tmp_path)
    r = cli("search", "--resume", run_id, "--store", store_uri(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "PWNED").exists()
    with open_store(store_uri(tmp_path), read_only=True) as s:
        steps = search_rows(s.run_evaluations(run_id))
    assert not [x["error"] for x in steps if x["state"] == State.FAILED and "prefix" in (x["error"] or "")]
    assert_clean(tmp_path, run_id, budget)
