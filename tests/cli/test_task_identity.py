"""One Task identity: ``automc compress --store`` and ``automc search`` on the same model, weights and data
describe one Task, so a search's reuse sees a compress evaluation as knowledge of its own task."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from automc.compress.data import load_data, synthetic
from automc.compress.models import build_model
from tests.conftest import automc_exe

SCHEME = "NS(target_ratio_factor=1.0, finetune_epochs_factor=0.4, max_layer_prune_ratio=0.9)"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic 4-class .npz (no validation part: compress and search both carve it from the test part)
    and the weights of a ResNet-8."""
    d = tmp_path_factory.mktemp("identity")
    data = synthetic(num_classes=4, per_class=24, size=16, test_per_class=8, val_fraction=0.0)
    np.savez(d / "data.npz", x_train=data.x["train"].permute(0, 2, 3, 1).numpy(), y_train=data.y["train"].numpy(),
             x_test=data.x["test"].permute(0, 2, 3, 1).numpy(), y_test=data.y["test"].numpy())
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 4).state_dict(), d / "w.pt")
    return d / "data.npz", d / "w.pt"


@pytest.mark.slow
def test_search_reuse_sees_a_compress_evaluation_as_its_own_task(inputs, tmp_path):
    from automc.kb import open_store
    from automc.search import SearchConfig, search
    from automc.search.reuse import load_prior

    data, weights = inputs
    uri = f"ladybug://{tmp_path / 'kb'}"
    exe = automc_exe()
    if exe is None:
        pytest.skip("the automc console script is not installed")
    # The user spells the model as the paper does and fine-tunes on half the training images: neither is part of
    # what the task is.
    out = subprocess.run([exe, "compress", "--model", "ResNet-8", "--weights", str(weights), "--data", str(data),
                          "--scheme", SCHEME, "--out", str(tmp_path / "out"), "--epochs", "0.5", "--batch-size", "32",
                          "--data-fraction", "0.5", "--device", "cpu", "--store", uri, "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    compressed = json.loads(out.stdout)["evaluation"]

    result = search(SearchConfig(
        model="resnet8", data=str(data), weights=str(weights), target_pr=0.4, budget=2, epochs=0.3, final_epochs=0,
        strategy="random", per_round=2, max_length=1, batch_size=32, lr=0.05, device="cpu", store=uri,
        cache_dir=str(tmp_path / "cache")))
    assert result.state == "COMPLETE"

    with open_store(uri) as s:
        tasks = s.query("MATCH (t:Task) RETURN t.id AS id")
        assert [t["id"] for t in tasks] == [result.task]
        linked = s.query("MATCH (r:SearchRun {id: $run})-[:RUN_ON_TASK]->(t:Task)<-[:EVAL_ON_TASK]-(e:Evaluation) "
                         "RETURN e.id AS id", {"run": result.run_id})
        assert compressed in {r["id"] for r in linked}
        assert compressed in {e["id"] for e in s.evaluations(task=result.task)}
        # Reuse learns from *other* tasks' evaluations: the compress result is this task's, never another's.
        prior = load_prior(s, result.task, fidelity="")
        assert prior.tasks == 0 and prior.evaluations == 0, prior.to_dict()


def test_task_features_count_the_whole_training_part_and_normalise_names(inputs):
    from automc.compress.identity import task_features

    data, _ = inputs
    full = load_data(data, device="cpu")
    half = load_data(data, fraction=0.5, device="cpu")
    assert half.size("train") < full.size("train")
    a = task_features("ResNet-8", data, half, val_accuracy=0.5, params=1.0, flops=2.0)
    b = task_features("resnet8", str(data), full, val_accuracy=0.5, params=1.0, flops=2.0)
    assert a == b and a.id == b.id
    assert (a.model, a.dataset, a.num_images) == ("resnet8", "data.npz", full.size("train") + full.size("val"))
    assert task_features("resnet8", "digits", full, val_accuracy=0.5, params=1.0, flops=2.0).dataset == "digits"
