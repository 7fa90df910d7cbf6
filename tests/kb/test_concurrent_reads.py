"""Reads beside a live writer: a read-only open that meets the writer's checkpoint waits for it, as a writer waits
for a lock, instead of failing with the engine's text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automc.kb import open_store
from tests.conftest import automc_exe

# Commits (each one checkpointed) through the Store, about 20 a second, until the stop file appears.
WRITER = """
import sys, time
from pathlib import Path
from automc.catalog import load_catalog
from automc.kb import TaskFeatures, open_store
uri, ready, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
features = TaskFeatures(model="resnet20", dataset="cifar10", num_classes=10, image_size=32, image_channels=3,
                        num_images=100, base_accuracy=0.5, params=1.0, flops=1.0)
n = 0
with open_store(uri) as s:
    ev = s.start_evaluation(features, load_catalog().parse_scheme("NS()"), target_pr=0.3)
    while not stop.exists():
        s.heartbeat(ev)
        n += 1
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(str(n))
        tmp.replace(ready)  # atomic: the test never reads a half-written count
        time.sleep(0.02)
print(n)
"""


@pytest.mark.slow
def test_reads_wait_for_a_writers_checkpoints(kb_copy, tmp_path):
    """``automc kb stats`` and ``kb query`` run again and again beside a writer that checkpoints in a loop: every
    read succeeds."""
    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    uri = f"ladybug://{kb_copy}"
    ready, stop = tmp_path / "writes", tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "AUTOMC_LOCK_TIMEOUT": "60"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, uri, str(ready), str(stop)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"the writer never wrote: {writer.communicate()[1][-2000:]}"
        before = int(ready.read_text() or 0)
        failures = []
        for i in range(10):
            read = (["stats"] if i % 2 == 0 else ["query", "MATCH (e:Evaluation) RETURN count(e) AS Evaluation"])
            res = subprocess.run([exe, "kb", *read, "--store", uri, "--json"], env=env, capture_output=True,
                                 text=True, timeout=180)
            if res.returncode != 0:
                failures.append(res.stderr.strip())
            else:
                out = json.loads(res.stdout)
                assert (out["nodes"] if i % 2 == 0 else out[0])["Evaluation"] == 1
        # Without time to wait, a read that meets a checkpoint says the store is busy, in the writer's words.
        for _ in range(3):
            res = subprocess.run([exe, "kb", "stats", "--store", uri, "--json"], capture_output=True, text=True,
                                 env={**env, "AUTOMC_LOCK_TIMEOUT": "0"}, timeout=180)
            assert res.returncode == 0 or res.stderr.startswith(f"error: store {kb_copy} is locked by another "
                                                                "process"), res.stderr
        during = int(ready.read_text() or 0) - before
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err[-2000:]
    assert during >= 10, f"the writer committed only {during} times while the reads ran; they never overlapped"
    assert failures == [], "\n".join(failures)


def test_leftover_checkpoint_of_a_dead_writer_is_finished_by_a_read(kb_copy):
    """A shadow file left by a writer killed mid-checkpoint: a read-only open finishes the checkpoint and reads."""
    Path(f"{kb_copy}.shadow").write_bytes(b"")
    with open_store(f"ladybug://{kb_copy}", read_only=True, lock_timeout=5) as s:
        assert s.stats()["nodes"]["Method"] == 7
    assert not Path(f"{kb_copy}.shadow").exists()
