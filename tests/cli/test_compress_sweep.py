"""A sweep of careless and hostile inputs to ``automc compress``: each ends before training with one line naming
the problem, exit status 1, no traceback, and nothing written in --out or the store."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from automc.cli.app import app
from automc.compress.models import build_model

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
GOOD_SCHEME = "NS(target_ratio_factor=1.0, finetune_epochs_factor=0.2)"


def _arrays(n, classes, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), np.arange(n) % classes


def _npz(path, **change):
    x, y = _arrays(32, 4)
    xt, yt = _arrays(16, 4, seed=1)
    np.savez(path, **{"x_train": x, "y_train": y, "x_test": xt, "y_test": yt, **change})
    return path


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good inputs and a zoo of bad ones, written once."""
    d = tmp_path_factory.mktemp("sweep")
    f = {"data": _npz(d / "data.npz"), "marker": d / "marker"}
    torch.manual_seed(0)
    torch.save({"state_dict": build_model("resnet8", 4).state_dict()}, d / "w.th")
    f["weights"] = d / "w.th"
    torch.save(build_model("resnet8", 10).state_dict(), d / "w10.th")
    torch.save(build_model("resnet20", 4).state_dict(), d / "w20.th")
    nan = build_model("resnet8", 4).state_dict()
    nan["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan, d / "wnan.th")
    torch.save({"model": _Payload(str(f["marker"]))}, d / "wevil.th")
    (d / "garbage.th").write_bytes(os.urandom(300))
    (d / "wdir").mkdir()
    (d / "empty").mkdir()
    (d / "notes.txt").write_text("x_train")
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(d / "no-ytest.npz", **{k: v for k, v in np.load(d / "data.npz").items() if k != "y_test"})
    _npz(d / "nan.npz", x_train=np.full((32, 16, 16, 3), np.nan))
    _npz(d / "label9.npz", y_test=np.full(16, 9))
    _npz(d / "neg.npz", y_train=-(np.arange(32) % 4))
    _npz(d / "gray.npz", x_train=_arrays(32, 4, channels=1)[0], x_test=_arrays(16, 4, channels=1, seed=1)[0])
    _npz(d / "nchw.npz", x_train=_arrays(32, 4)[0].transpose(0, 3, 1, 2))
    _npz(d / "tiny.npz", x_train=_arrays(32, 4, size=8)[0], x_test=_arrays(16, 4, size=8, seed=1)[0])
    _npz(d / "float-labels.npz", y_train=(np.arange(32) % 4) + 0.5)
    _npz(d / "empty-test.npz", x_test=np.zeros((0, 16, 16, 3), np.uint8), y_test=np.zeros(0, np.int64))
    _npz(d / "ten-classes.npz", y_train=np.arange(32) % 10, y_test=np.arange(16) % 10)
    np.savez(d / "val10.npz", x_val=_arrays(20, 10, seed=3)[0], y_val=np.arange(20) % 10)
    np.savez(d / "val-small.npz", x_val=_arrays(20, 4, size=8, seed=3)[0], y_val=np.arange(20) % 4)
    with open(d / "objects.npz", "wb") as fh:
        np.savez(fh, x_train=np.array([object()] * 3, dtype=object), y_train=np.zeros(3),
                 x_test=np.zeros(3), y_test=np.zeros(3))
    cifar = d / "evil-cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    evil = pickle.dumps({b"data": _Payload(str(f["marker"])), b"labels": [0]})
    (cifar / "data_batch_1").write_bytes(evil)
    (cifar / "test_batch").write_bytes(evil)
    (d / "a-file").write_text("")
    f["dir"] = d
    return f


def _cli(f, tmp_path, **change):
    opts = {"--model": "resnet8", "--weights": str(f["weights"]), "--data": str(f["data"]),
            "--scheme": GOOD_SCHEME, "--out": str(tmp_path / "out"), "--epochs": "0.1", "--batch-size": "16",
            "--device": "cpu", "--store": f"ladybug://{tmp_path / 'kb' / 'kb.lbug'}"}
    opts.update(change)
    return ["compress", *(a for k, v in opts.items() if v is not None for a in (k, v))]


D = "{dir}/"  # replaced by the fixture folder
CASES = [
    # weights
    ({"--weights": "/nonexistent/w.th"}, "weights file not found"),
    ({"--weights": D + "wdir"}, "is a directory; expected a checkpoint file"),
    ({"--weights": D + "garbage.th"}, "cannot read weights"),
    ({"--weights": D + "wevil.th"}, "cannot read weights"),
    ({"--weights": D + "w10.th"}, r"classifier \(linear\) has 10 classes but the data has 4"),
    ({"--weights": D + "w20.th"}, "weights do not fit CifarResNet"),
    ({"--weights": D + "wnan.th"}, r"weights contain NaN or infinite values \(e.g. conv1.weight\)"),
    # data
    ({"--data": "/nonexistent/data.npz"}, "data path not found"),
    ({"--data": D + "empty"}, "no dataset found"),
    ({"--data": D + "notes.txt"}, "expected a .npz file or a dataset directory"),
    ({"--data": D + "garbage.npz"}, "cannot read data"),
    ({"--data": D + "objects.npz"}, "cannot read data .*allow_pickle"),
    ({"--data": D + "no-ytest.npz"}, r"missing array\(s\) y_test"),
    ({"--data": D + "nan.npz"}, "x_train: images contain NaN"),
    ({"--data": D + "label9.npz"}, "y_test: label 9 is outside 0..3"),
    ({"--data": D + "neg.npz"}, "y_train: labels must be class ids 0..C-1, found -3"),
    ({"--data": D + "float-labels.npz"}, "y_train: labels must be whole numbers"),
    ({"--data": D + "gray.npz"}, "x_train of gray.npz has 1-channel images but CifarResNet expects 3"),
    ({"--data": D + "nchw.npz"}, "channels-first"),
    ({"--data": D + "empty-test.npz"}, "x_test: no images"),
    ({"--data": D + "ten-classes.npz"}, r"classifier \(linear\) has 4 classes but the data has 10"),
    ({"--data": D + "evil-cifar"}, "refusing to unpickle pathlib.Path.write_text"),
    ({"--data": D + "tiny.npz", "--model": "vgg11", "--weights": None}, "CifarVGG cannot take the 8x8 images"),
    ({"--val-data": D + "val10.npz"}, "y_val: label 9 is outside 0..3"),
    ({"--val-data": D + "val-small.npz"}, "x_val: 8x8x3 images, but x_train of data.npz has 16x16x3"),
    ({"--val-data": D + "data.npz"}, "x_test of the data file is its test part"),
    ({"--val-data": "/nonexistent/v.npz"}, "data path not found"),
    ({"--val-from": "sideways"}, "--val-from: must be test or train"),
    # scheme
    ({"--scheme": "XYZ(a=1)"}, "unknown method 'XYZ'"),
    ({"--scheme": "NS(max_layer_prune_ratio=1.5)"}, "outside the domain"),
    ({"--scheme": "NS(target_ratio_factor=0.3, target_ratio_factor=0.9)"}, "target_ratio_factor: given twice"),
    ({"--scheme": "NS(target_ratio_factor=abc)"}, "expected a number"),
    ({"--scheme": "NS(target_ratio_factor=nan)"}, "outside the domain"),
    ({"--scheme": "NS(kd_alpha=0.5)"}, "NS has no hyperparameter 'kd_alpha'"),
    ({"--scheme": " > "}, "empty scheme"),
    ({"--scheme": " " * 60_000}, "longer than the 10,000 allowed"),
    ({"--scheme": "NS" + " " * 9_000 + "!"}, "cannot parse strategy"),
    # numbers
    ({"--epochs": "inf"}, "--epochs: must be a finite number ≥ 0, got inf"),
    ({"--epochs": "nan"}, "--epochs: must be a finite number ≥ 0, got nan"),
    ({"--epochs": "-1"}, "--epochs"),
    ({"--batch-size": "0"}, "--batch-size: must be an integer ≥ 1, got 0"),
    ({"--seed": "-1"}, "--seed: must be an integer in 0..4294967295, got -1"),
    ({"--data-fraction": "0"}, "--data-fraction"),
    ({"--data-fraction": "1.5"}, "--data-fraction"),
    ({"--data-fraction": "nan"}, "--data-fraction"),
    ({"--lr": "0"}, "--lr: must be a finite number > 0"),
    ({"--lr": "inf"}, "--lr"),
    ({"--lr": "nan"}, "--lr"),
    ({"--target-pr": "1"}, "--target-pr"),
    ({"--target-pr": "nan"}, "--target-pr"),
    # paths and machine
    ({"--out": D + "a-file"}, "a-file exists and is not a directory"),
    ({"--out": D + "a-file/sub"}, "a-file is not a directory"),
    ({"--device": "tpu"}, "unknown device 'tpu'"),
    ({"--model": "resnet7"}, "needs depth 6n\\+2"),
]


@pytest.mark.parametrize(("change", "message"), CASES, ids=[f"{i}-{m[:30]}" for i, (_, m) in enumerate(CASES)])
def test_bad_input_fails_first_with_one_line_and_writes_nothing(files, tmp_path, change, message):
    change = {k: (v.replace(D, f"{files['dir']}/") if isinstance(v, str) else v) for k, v in change.items()}
    r = runner.invoke(app, _cli(files, tmp_path, **change))
    assert r.exit_code == 1, (r.output, r.exception)
    assert isinstance(r.exception, SystemExit)  # handled: no traceback
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "kb").exists()
    assert not files["marker"].exists()


def test_unwritable_out_fails_first(files, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    r = runner.invoke(app, _cli(files, tmp_path, **{"--out": str(locked / "out")}))
    assert r.exit_code == 1 and "--out is not writable" in r.stderr
    assert not (tmp_path / "kb").exists()


def test_bad_lock_timeout_is_one_line_and_creates_no_store(files, tmp_path):
    pytest.importorskip("ladybug")
    r = runner.invoke(app, _cli(files, tmp_path), env={"AUTOMC_LOCK_TIMEOUT": "abc"})
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert r.stderr.strip() == "error: AUTOMC_LOCK_TIMEOUT: must be a number of seconds ≥ 0, got 'abc'"
    assert not (tmp_path / "kb").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_process_prints_no_traceback(files, tmp_path):
    """The installed entry point, in its own process, with a hostile dataset."""
    args = _cli(files, tmp_path, **{"--data": str(files["dir"] / "evil-cifar")})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", "from automc.cli.app import main; main()", *args],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error: ") and "refusing to unpickle" in p.stderr
    assert not files["marker"].exists() and not (tmp_path / "out").exists()


def test_compress_module_does_not_import_torch():
    code = "import sys, automc.cli.compress; assert 'torch' not in sys.modules, 'torch imported'"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr


def test_store_help_says_nothing_is_recorded_without_it():
    r = runner.invoke(app, ["compress", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "not recorded unless given or AUTOMC_STORE is set" in " ".join(r.stdout.split())
    assert "default: user data dir" not in r.stdout
