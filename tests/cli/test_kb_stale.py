"""A ``automc compress --store`` killed with SIGKILL leaves a RUNNING evaluation that ``automc kb stale`` marks
INTERRUPTED; one stopped by Ctrl-C records INTERRUPTED itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from automc.cli.app import app
from automc.kb import State, open_store
from tests.conftest import automc_exe

runner = CliRunner()


def _compress_until_training(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """``automc compress --store`` in a child process, returned once its RUNNING record is written."""
    from automc.compress.data import synthetic

    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    data = synthetic(num_classes=4, per_class=24, size=16, test_per_class=8, val_fraction=0.0)
    np.savez(tmp_path / "data.npz", x_train=data.x["train"].permute(0, 2, 3, 1).numpy(),
             y_train=data.y["train"].numpy(), x_test=data.x["test"].permute(0, 2, 3, 1).numpy(),
             y_test=data.y["test"].numpy())
    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [exe, "compress", "--model", "resnet8", "--data", str(tmp_path / "data.npz"), "--epochs", "50",
         "--batch-size", "32", "--device", "cpu", "--scheme", "NS(target_ratio_factor=1.0)",
         "--out", str(tmp_path / "out"), "--store", uri],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = child.stderr.readline()  # the first step starts after the RUNNING record is written
    if not line.startswith("step 1/1"):
        child.kill()
        child.wait()
        raise AssertionError(line + child.stderr.read())
    return child, uri


@pytest.mark.slow
def test_killed_compress_is_marked_stale(tmp_path):
    child, uri = _compress_until_training(tmp_path)
    try:
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    with open_store(uri, read_only=True) as s:
        (running,) = s.evaluations(state=State.RUNNING)
    with open_store(uri) as s:  # a writable open marks nothing
        assert s.evaluations(state=State.RUNNING) == [running]
    r = runner.invoke(app, ["kb", "stale", "--store", uri, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"stale": [running["id"]]}
    with open_store(uri, read_only=True) as s:
        (failed,) = s.evaluations(state=State.INTERRUPTED)
        error = s.query("MATCH (e:Evaluation {id: $id}) RETURN e.error AS e", {"id": failed["id"]})[0]["e"]
    assert failed["id"] == running["id"] and error == f"stale: process {child.pid} on {os.uname().nodename} is gone"


@pytest.mark.slow
def test_compress_stopped_by_ctrl_c_is_interrupted_not_failed(tmp_path):
    child, uri = _compress_until_training(tmp_path)
    try:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
        child.wait()
    with open_store(uri, read_only=True) as s:
        # when the child never saw its SIGINT (it was ignored), no evaluation is in any of these states
        held = s.query("MATCH (e:Evaluation) RETURN e.id AS id, e.state AS state, e.error AS error", {})
        why = f"evaluations {held}; exit {child.returncode}; child stderr: {err[-2000:]}"
        assert s.evaluations(state=State.RUNNING) == [] and s.evaluations(state=State.FAILED) == [], why
        cuts = s.evaluations(state=State.INTERRUPTED)
        assert len(cuts) == 1, why
        (cut,) = cuts
        error = s.query("MATCH (e:Evaluation {id: $id}) RETURN e.error AS e", {"id": cut["id"]})[0]["e"]
    assert error.startswith("KeyboardInterrupt")


def test_stale_command_rejects_bad_duration_and_missing_store(tmp_path):
    r = runner.invoke(app, ["kb", "stale", "--store", f"ladybug://{tmp_path / 'kb.lbug'}", "--max-age", "soon"])
    assert r.exit_code == 1 and "duration" in r.stderr
    r = runner.invoke(app, ["kb", "stale", "--store", f"ladybug://{tmp_path / 'kb.lbug'}"])
    assert r.exit_code == 1 and "no knowledge base" in r.stderr and list(tmp_path.iterdir()) == []
