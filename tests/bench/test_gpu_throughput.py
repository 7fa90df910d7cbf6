"""bench/gpu_throughput.py end to end on a tiny synthetic setting: a real search step and a real reference loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from automc.compress.data import synthetic

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a subprocess that imports torch and runs two real steps and a reference loop
def test_bench_runs_end_to_end(tmp_path):
    data = synthetic(num_classes=4, per_class=16, size=16, seed=0)

    def hwc(split):
        return data.x[split].permute(0, 2, 3, 1).numpy()

    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=hwc("train"), y_train=data.y["train"].numpy(), x_val=hwc("val"),
             y_val=data.y["val"].numpy(), x_test=hwc("test"), y_test=data.y["test"].numpy())
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--model", "resnet8",
                           "--width", "4", "--data", str(npz), "--device", "cpu", "--batch-size", "16",
                           "--epochs", "0.5", "--threads", "1", "--ref-min-steps", "3", "--out", str(out),
                           "--name", "tiny"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "tiny.json").read_text())
    assert [s["method"] for s in r["steps"]] == ["SFP", "LMA"]
    assert r["machine"]["cores"] and r["gpu_target_measured"] is False
    for s in r["steps"]:
        assert "target_ratio_factor=1" in s["strategy"]
        assert s["trained_images"] > 0 and s["forward_images"] > 0 and s["ratio"] > 0
        assert s["pr"] >= 0.39  # one step to the target
    assert r["reference"]["images"] >= 3 * 16 and r["reference"]["images_per_s"] > 0
    md = (out / "tiny.md").read_text()
    assert "**CPU**" in md and "NOT measured" in md and "SFP" in md and "LMA" in md
