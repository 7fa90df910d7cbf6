"""Labels that leave classes without training images (10..19 for ten classes) are refused by every command that
loads data, in a real process, before any model is built or any record, cache or output is written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from automc.compress.models import build_model
from tests.conftest import automc_exe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gapped(tmp_path_factory):
    """Ten classes labelled 10..19 (so a model sized by the largest label has 20 outputs), and 20-class weights."""
    d = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(0)
    x, xt = (rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) for n in (40, 20))
    np.savez(d / "data.npz", x_train=x, y_train=10 + np.arange(40) % 10, x_test=xt, y_test=10 + np.arange(20) % 10)
    torch.save(build_model("resnet8", 20).state_dict(), d / "w20.th")
    return d


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600, env=env)


def _expected(data: Path) -> str:
    return (f"error: {data}: y_train: labels must be 0..C-1; class(es) 0..9 have no images (labels found: 10..19; "
            f"number the 10 classes 0..9)")


@pytest.mark.slow
@pytest.mark.parametrize("weights", [False, True], ids=["no-weights", "20-class-weights"])
def test_compress_refuses_and_records_nothing(gapped, tmp_path, weights):
    data = gapped / "data.npz"
    res = _run("compress", "--model", "resnet8", "--data", str(data), "--scheme", "NS(target_ratio_factor=1.0)",
               "--out", str(tmp_path / "out"), "--epochs", "0.1", "--batch-size", "16", "--device", "cpu",
               "--store", f"ladybug://{tmp_path / 'kb' / 'kb.lbug'}",
               *(["--weights", str(gapped / "w20.th")] if weights else []))
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [_expected(data)]
    assert not (tmp_path / "out").exists() and not (tmp_path / "kb").exists()


@pytest.mark.slow
def test_search_refuses_and_records_nothing(gapped, tmp_path):
    data = gapped / "data.npz"
    res = _run("search", "--model", "resnet8", "--width", "4", "--data", str(data), "--target-pr", "0.4",
               "--max-steps", "2", "--epochs", "0.1", "--train-epochs", "0.1", "--final-epochs", "0", "--device", "cpu",
               "--batch-size", "16", "--store", f"ladybug://{tmp_path / 'kb' / 'kb.lbug'}",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert [line for line in res.stderr.splitlines() if line.strip()] == [_expected(data)]
    assert not (tmp_path / "kb").exists() and not (tmp_path / "cache").exists()
    assert not (tmp_path / "out").exists()
