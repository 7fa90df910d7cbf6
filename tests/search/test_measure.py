"""Test accuracy is measured for final models only: a search step never evaluates the test split and stores no test
accuracy; final fine-tunes store it with their per-image record, which a paired test compares."""

from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch

import automc.compress.train as train
from automc.compress.base import Task, TrainBudget
from automc.compress.models import build_model
from automc.compress.paired import compare_evaluations, decode_bits
from automc.kb import open_store
from automc.search import search
from automc.search._base import search_rows
from automc.search.evaluator import Evaluator
from tests.search.test_study import config, write_inputs

torch.set_num_threads(1)
TEST_FIELDS = ("accuracy", "accuracy_low", "accuracy_high", "ar", "test_correct_bits", "test_ids_hash")


@pytest.fixture
def test_predictions(monkeypatch):
    """A spy on the real ``compress.train.predict`` (every accuracy goes through it): for each call on the test
    split, whether a search step (``search.step.execute``) was on the stack."""
    calls: list[bool] = []
    real = train.predict

    def spy(model, data, split="test", **kw):
        if split == "test":
            calls.append(any(f.name == "execute" and f.filename.endswith("step.py")
                             for f in traceback.extract_stack()))
        return real(model, data, split, **kw)

    monkeypatch.setattr(train, "predict", spy)
    return calls


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def test_a_search_step_never_evaluates_the_test_split(data, space, tmp_path, test_predictions):
    torch.manual_seed(0)
    base = build_model("resnet8", data.num_classes, width=4)
    task = Task(data, 0.4, TrainBudget(epochs=0.5, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    ev = Evaluator(base, task, cache_dir=tmp_path / "cache", space=space)
    b = ev.base()  # the base model is measured once, with test: AR of final models needs it
    assert b.test_accuracy is not None and len(test_predictions) == 1
    key = space.parse("NS(target_ratio_factor=0.5) > SFP")
    steps = [ev.evaluate(key[:1]), ev.evaluate(key)]
    assert len(test_predictions) == 1, "a search step evaluated the test split"
    for r in steps:
        assert r.ok and r.fidelity == "search" and r.val_accuracy is not None
        assert all(r.measured.get(k) is None for k in TEST_FIELDS)
        assert r.test_accuracy is None and r.ar is None
    final, _ = ev.final(key, task)
    assert len(test_predictions) == 2  # the final model alone: its parent is not tested
    assert final.ok and final.test_low <= final.test_accuracy <= final.test_high
    assert final.ar == pytest.approx((final.test_accuracy - b.test_accuracy) / b.test_accuracy)
    bits = decode_bits(final.measured["test_correct_bits"])
    assert bits.size == data.size("test") and bits.mean() == pytest.approx(final.test_accuracy)


@pytest.mark.slow
def test_a_search_stores_test_accuracy_for_final_models_only(inputs, tmp_path, test_predictions):
    runs = [search(config(inputs, tmp_path, max_steps=5, final_epochs=0.3, top_k=2, strategy=s, out=str(tmp_path / s)))
            for s in ("random", "tpe")]
    assert test_predictions and not any(test_predictions), "the test split was evaluated inside a search step"
    finals = []
    with open_store(config(inputs, tmp_path).store, read_only=True) as s:
        for run in runs:
            rows = s.run_evaluations(run.run_id)
            steps = [r for r in search_rows(rows) if r["state"] == "COMPLETE"]
            assert steps and all(r["val_accuracy"] is not None for r in steps)
            assert all(r[k] is None for r in steps for k in ("accuracy", "accuracy_low", "accuracy_high", "ar"))
            final = [r for r in rows if r["fidelity"] == "final" and r["state"] == "COMPLETE"]
            assert final and all(r["accuracy"] is not None and r["ar"] is not None for r in final)
            records = s.named("test-records", {"run": run.run_id})
            tested = {r["id"] for r in rows if r["fidelity"] in ("final", "baseline") and r["state"] == "COMPLETE"}
            assert {r["id"] for r in records} == tested  # final models and the baseline; no search step
            finals.append(records[0])
            for row in run.front:  # the front shows test accuracy for final rows only, never 0.0 for the others
                assert (row["test_accuracy"] is not None) == (row["fidelity"] == "final")
        report = (tmp_path / "random" / "report.md").read_text()
        assert "measured for final models only" in report
    a, b = finals
    assert a["test_ids_hash"] == b["test_ids_hash"]
    bits_a, bits_b = decode_bits(a["test_correct_bits"]), decode_bits(b["test_correct_bits"])
    assert bits_a.mean() == pytest.approx(a["accuracy"]) and bits_b.mean() == pytest.approx(b["accuracy"])
    r = compare_evaluations(a, b)
    assert r.n == bits_a.size and (r.b01, r.b10) == (int(np.sum(~bits_a & bits_b)), int(np.sum(bits_a & ~bits_b)))
    assert r.b10 - r.b01 == int(bits_a.sum()) - int(bits_b.sum()) and 0 < r.p_value <= 1
