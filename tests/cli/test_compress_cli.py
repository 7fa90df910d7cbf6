import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from automc.cli.app import app
from automc.compress.data import synthetic
from automc.compress.models import build_model
from automc.kb.states import State

runner = CliRunner()
SCHEME = "NS(target_ratio_factor=1.0, finetune_epochs_factor=0.4, max_layer_prune_ratio=0.9)"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = synthetic(num_classes=4, per_class=24, size=16, test_per_class=8, val_fraction=0.0)
    np.savez(d / "data.npz", x_train=data.x["train"].permute(0, 2, 3, 1).numpy(), y_train=data.y["train"].numpy(),
             x_test=data.x["test"].permute(0, 2, 3, 1).numpy(), y_test=data.y["test"].numpy())
    torch.manual_seed(0)
    torch.save({"state_dict": build_model("resnet20", 4).state_dict()}, d / "w.th")
    return d


def _args(d, *extra):
    return ["compress", "--model", "resnet20", "--weights", str(d / "w.th"), "--data", str(d / "data.npz"),
            "--epochs", "0.5", "--batch-size", "32", "--device", "cpu", *extra]


def test_json_output_and_saved_model(inputs, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, _args(inputs, "--target-pr", "0.4", "--scheme", SCHEME, "--out", str(out), "--json"))
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert abs(obj["pr"] - 0.4) <= 0.03 and obj["params_after"] < obj["params_before"]
    assert {"flops_before", "flops_after", "fr", "acc_before", "acc_after", "ar", "steps"} <= set(obj)
    assert len(obj["steps"]) == 1
    assert (out / "model.pt2").is_file() and (out / "architecture.json").is_file()


def test_table_output_says_which_images_each_column_used(inputs, tmp_path):
    r = runner.invoke(app, _args(inputs, "--target-pr", "0.3", "--scheme", SCHEME, "--out", str(tmp_path)),
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "before" in r.stdout and "PR" in r.stdout
    assert "val acc: x_test[half 1 of 2, seed 0] of data.npz (16 images)" in r.stdout
    assert "test acc: x_test[half 2 of 2, seed 0] of data.npz (16 images)" in r.stdout
    assert "fine-tuned on: x_train of data.npz (96 images)" in r.stdout


def test_val_data_and_val_from_train(inputs, tmp_path):
    rng = np.random.default_rng(7)
    np.savez(tmp_path / "val.npz", x_val=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
             y_val=np.arange(12) % 4)
    out = tmp_path / "o1"
    r = runner.invoke(app, _args(inputs, "--scheme", SCHEME, "--out", str(out), "--json", "--val-data",
                                 str(tmp_path / "val.npz")))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)["data"]
    assert data["val"] == {"source": "x_val of val.npz", "images": 12}
    assert data["test"] == {"source": "x_test of data.npz", "images": 32}
    assert json.loads((out / "result.json").read_text())["data"] == data
    r = runner.invoke(app, _args(inputs, "--scheme", SCHEME, "--out", str(tmp_path / "o2"), "--json",
                                 "--val-from", "train"))
    assert r.exit_code == 0, r.output
    assert "--val-from train" in r.stderr and "biased" in r.stderr
    data = json.loads(r.stdout)["data"]
    assert data["val"]["source"] == "x_train[stratified 10%, seed 0] of data.npz" and data["test"]["images"] == 32


@pytest.mark.parametrize(("change", "message"), [
    ({"--scheme": "XYZ(a=1)"}, "unknown method"),
    ({"--scheme": "NS(max_layer_prune_ratio=1.5)"}, "outside the domain"),
    ({"--model": "resnet32"}, "do not fit"),
    ({"--data": "/nonexistent/dir"}, "data path not found"),
    ({"--target-pr": "1.5"}, "--target-pr"),
])
def test_bad_input_is_one_error_line(inputs, tmp_path, change, message):
    args = _args(inputs, "--target-pr", "0.4", "--scheme", SCHEME, "--out", str(tmp_path))
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert message in r.stderr and r.stderr.strip().startswith("error:")
    assert len(r.stderr.strip().splitlines()) == 1


def test_record_in_store(inputs, tmp_path):
    pytest.importorskip("ladybug")
    from automc.kb import open_store

    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    r = runner.invoke(app, _args(inputs, "--target-pr", "0.4", "--scheme", SCHEME, "--out", str(tmp_path / "o"),
                                 "--store", uri, "--json"))
    assert r.exit_code == 0, r.output
    eval_id = json.loads(r.stdout)["evaluation"]
    with open_store(uri) as s:
        rows = s.evaluations()
    (row,) = [row for row in rows if row["id"] == eval_id]
    assert row["state"] == "COMPLETE" and row["scheme"].startswith("NS(") and abs(row["pr"] - 0.4) <= 0.03


def test_failed_compression_is_recorded_as_fail(inputs, tmp_path):
    """A method that cannot reach its target leaves a FAILED evaluation with the reason, not a RUNNING one."""
    from automc.kb import open_store

    uri = f"ladybug://{tmp_path / 'kb.lbug'}"
    scheme = "NS(target_ratio_factor=1.0, finetune_epochs_factor=0.2, max_layer_prune_ratio=0.7)"
    r = runner.invoke(app, _args(inputs, "--target-pr", "0.9", "--scheme", scheme, "--out", str(tmp_path / "o"),
                                 "--store", uri))
    assert r.exit_code == 1 and "error: " in r.stderr and "max_layer_prune_ratio" in r.stderr
    with open_store(uri) as s:
        assert s.evaluations(state="RUNNING") == [] and s.evaluations(state="COMPLETE") == []
        (failed,) = s.evaluations(state=State.FAILED)
        assert failed["scheme"].startswith("NS(")
        assert s.query("MATCH (e:Evaluation {id: $id}) RETURN e.error AS error", {"id": failed["id"]})[0]["error"]
