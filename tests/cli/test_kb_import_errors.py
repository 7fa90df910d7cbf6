"""``automc kb import`` of a file with many bad rows: a bounded report on the terminal, every error in --errors FILE."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from automc.kb import open_store
from tests.conftest import automc_exe

HEADER = ("method,model,dataset,hyperparameters,flops_reduction,accuracy_change,base_top1,base_params_m,"
          "base_flops_m,num_classes,num_images,image_size,image_channels\n")
HPS = '"{""finetune_epochs_factor"": 0.4, ""max_layer_prune_ratio"": 0.7, ""reduction_ratio"": 0.5}"'
N_BAD = 30_000


def _bad_csv(path: Path) -> Path:
    """One good row, then N_BAD rows whose accuracy_change is not a number."""
    with path.open("w") as f:
        f.write(HEADER)
        f.write(f"NS,resnet56,cifar10,{HPS},0.4,-0.01,0.93,0.85,125.0,10,60000,32,3\n")
        for i in range(N_BAD):
            f.write(f"NS,resnet56,cifar10,{HPS},0.4,bad{i},0.93,0.85,125.0,10,60000,32,3\n")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "200"}
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_thirty_thousand_bad_rows_print_twenty_and_a_count(kb_copy, tmp_path):
    uri = f"ladybug://{kb_copy}"
    csv = _bad_csv(tmp_path / "bad.csv")
    with open_store(uri, read_only=True) as s:
        before = s.stats()

    res = _run("kb", "import", str(csv), "--store", uri)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0] == f"error: {N_BAD:,} bad row(s); nothing was written"
    assert lines[1] == f"{csv}:3: accuracy_change: expected a number, got 'bad0'"
    assert lines[20] == f"{csv}:22: accuracy_change: expected a number, got 'bad19'"
    assert lines[21:] == [f"... and {N_BAD - 20:,} more (use --errors FILE for all)"]
    assert res.stdout == ""

    errors = tmp_path / "errors.txt"
    res = _run("kb", "import", str(csv), "--store", uri, "--errors", str(errors))
    assert res.returncode == 1
    assert len(res.stderr.splitlines()) == 22 and f"written to {errors}" in res.stderr.splitlines()[-1]
    listed = errors.read_text().splitlines()
    assert len(listed) == N_BAD
    assert listed[0] == f"{csv}:3: accuracy_change: expected a number, got 'bad0'"
    assert listed[-1] == f"{csv}:{N_BAD + 2}: accuracy_change: expected a number, got 'bad{N_BAD - 1}'"
    with open_store(uri, read_only=True) as s:
        assert s.stats() == before  # nothing written, not even the good row

    # into a store that does not exist yet: refused the same way, and no store is left behind
    new = tmp_path / "new" / "kb.lbug"
    res = _run("kb", "import", str(csv), "--store", f"ladybug://{new}")
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 22
    assert not new.parent.exists()


def test_errors_file_must_be_writable_and_is_emptied_by_a_clean_import(kb_copy, tmp_path):
    uri = f"ladybug://{kb_copy}"
    good = tmp_path / "good.csv"
    good.write_text(HEADER + f"NS,resnet56,cifar10,{HPS},0.4,-0.01,0.93,0.85,125.0,10,60000,32,3\n")
    with open_store(uri, read_only=True) as s:
        before = s.stats()
    res = _run("kb", "import", str(good), "--store", uri, "--errors", str(tmp_path))
    assert res.returncode == 1 and res.stderr.startswith(f"error: {tmp_path}: --errors: is a directory")
    with open_store(uri, read_only=True) as s:
        assert s.stats() == before  # refused before anything was read or written
    errors = tmp_path / "errors.txt"
    errors.write_text("stale\n")
    res = _run("kb", "import", str(good), "--store", uri, "--errors", str(errors))
    assert res.returncode == 0, res.stderr
    assert errors.read_text() == ""
