"""Crash safety of the LadybugDB store: a writer killed mid-write loses at most its own transaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automc.importers import import_file
from automc.kb import open_store
from tests.conftest import automc_exe

HEADER = ("method,model,dataset,hyperparameters,flops_reduction,accuracy_change,base_top1,base_params_m,"
          "base_flops_m,num_classes,num_images,image_size,image_channels\n")
HPS = '"{""finetune_epochs_factor"": 0.4, ""max_layer_prune_ratio"": 0.7, ""reduction_ratio"": 0.5}"'


def _experience_csv(path: Path, first: int, n: int) -> Path:
    with path.open("w") as f:
        f.write(HEADER)
        for i in range(first, first + n):
            f.write(f"NS,resnet56,cifar10,{HPS},0.4,{-i / 1e7:.7f},0.93,0.85,125.0,10,60000,32,3\n")
    return path


def _experiences(uri: str) -> int:
    with open_store(uri, read_only=True) as s:
        return s.stats()["nodes"]["Experience"]


def test_torn_log_tail_is_dropped_and_committed_data_kept(tmp_path):
    """A log whose last transaction was cut short (as a kill during its write leaves it) opens without it."""
    db = tmp_path / "kb.lbug"
    uri = f"ladybug://{db}"
    with open_store(uri) as s:
        s.query("CREATE (:Model {name: 'committed'})")
    # A second writer commits a big transaction to the log and dies before any checkpoint moves it into the store.
    code = ("import ladybug, os, sys\n"
            "d = ladybug.Database(sys.argv[1], auto_checkpoint=False)\n"
            "c = ladybug.Connection(d)\n"
            "c.execute('UNWIND range(1, 20000) AS i CREATE (:Model {name: \"m\" + string(i)})')\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=120)
    wal = Path(f"{db}.wal")
    assert wal.stat().st_size > 100_000
    with wal.open("r+b") as f:  # cut the last transaction's records in half
        f.truncate(wal.stat().st_size // 2)
    with open_store(uri) as s:
        assert s.recovered
        names = {r["name"] for r in s.query("MATCH (m:Model) RETURN m.name AS name")}
    assert names == {"committed"}
    with open_store(uri, read_only=True) as s:  # recovery is durable: the next open needs none
        assert not s.recovered and s.stats()["nodes"]["Model"] == 1


@pytest.mark.slow
def test_kill_during_import_keeps_earlier_import(tmp_path):
    """SIGKILL ``automc kb import`` while it writes: the store opens and the earlier import is all there."""
    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    db = tmp_path / "kb.lbug"
    uri = f"ladybug://{db}"
    small = _experience_csv(tmp_path / "small.csv", 0, 5)
    big = _experience_csv(tmp_path / "big.csv", 1000, 10000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open_store(uri) as s:
        import_file(s, small)
    wal = Path(f"{db}.wal")
    hit, outcomes = 0, []
    for _ in range(2):  # a second try only when the first import finished before the poll saw its log
        child = subprocess.Popen([exe, "kb", "import", str(big), "--store", uri], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The transaction reaches the log only at commit: kill as soon as the log starts growing.
        deadline = time.monotonic() + 120
        while child.poll() is None and time.monotonic() < deadline:
            if wal.exists() and wal.stat().st_size > 0:
                os.kill(child.pid, signal.SIGKILL)
                hit += 1
                break
        child.wait()
        count = _experiences(uri)
        outcomes.append(count)
        assert count in (5, 10005), count  # never a part of a transaction, never less than what was committed
        if hit:
            break
        if count == 10005:  # the kill came after the commit; start over for another try
            with open_store(uri) as s:
                s.query("MATCH (e:Experience) WHERE e.ar < -0.00005 DETACH DELETE e")
            assert _experiences(uri) == 5
    assert hit, f"the import never reached its write phase ({outcomes})"
