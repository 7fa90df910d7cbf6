"""The paired test on the same test images: exact McNemar on constructed cases, the packed bits, the records of a
measured and an unmeasured test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automc.compress.base import Task
from automc.compress.data import synthetic
from automc.compress.metrics import Measurement, evaluation_record
from automc.compress.models import build_model
from automc.compress.paired import (
    compare_evaluations,
    decode_bits,
    encode_bits,
    images_hash,
    mcnemar,
    per_image_correct,
)
from automc.compress.scheme import measure
from automc.compress.train import evaluate
from automc.errors import ValidationError

torch.set_num_threads(1)


def test_mcnemar_exact_on_constructed_cases():
    a = np.array([True] * 10 + [True] * 20 + [False] * 5)  # A alone right on the first 10
    b = np.array([False] * 10 + [True] * 20 + [False] * 5)
    r = mcnemar(a, b)
    assert (r.b01, r.b10, r.n, r.exact) == (0, 10, 35, True)
    assert r.statistic == 0 and r.p_value == pytest.approx(2 * 0.5**10, rel=1e-12)
    assert mcnemar(b, a).p_value == pytest.approx(r.p_value) and mcnemar(b, a).b01 == 10
    even = mcnemar([True, False, True, False], [False, True, False, True])  # 2 and 2 discordant
    assert (even.b01, even.b10, even.p_value) == (2, 2, 1.0)
    one_sided = mcnemar([True, True, True, False], [False, False, False, True])  # 3 vs 1: p = 2 * 5/16
    assert one_sided.p_value == pytest.approx(2 * 5 / 16)
    with pytest.raises(ValidationError, match="different numbers of images"):
        mcnemar([True], [True, False])


@pytest.mark.parametrize("n", [0, 1, 8, 13, 3000])
def test_bits_round_trip(n):
    a = np.random.default_rng(n).random(n) < 0.7
    text = encode_bits(a)
    assert isinstance(text, str) and text.startswith(f"{n}:")
    assert np.array_equal(decode_bits(text), a)


@pytest.mark.parametrize("bad", ["", "abc", "13:", "3:!!!!", "100:AA=="])
def test_bad_bits_are_refused(bad):
    with pytest.raises(ValidationError, match="per-image correctness"):
        decode_bits(bad)


def test_evaluation_record_leaves_an_unmeasured_test_split_none():
    base = Measurement(1000, 5000, 0.8, 0.75, 100, 75, 100, 80)
    searched = Measurement(500, 2500, 0.7, 0.0, 0, 0, 100, 70)  # measure(test=False)
    rec = evaluation_record(searched, base, base)
    assert rec["accuracy"] is None and rec["accuracy_low"] is None and rec["accuracy_high"] is None
    assert rec["ar"] is None and "test_correct_bits" not in rec
    assert rec["val_accuracy"] == 0.7 and rec["pr"] == 0.5 and rec["step_ar"] == pytest.approx(0.7 / 0.8 - 1)
    tested = evaluation_record(Measurement(500, 2500, 0.7, 0.6, 100, 60, 100, 70), base)
    assert tested["accuracy"] == 0.6 and tested["ar"] == pytest.approx(0.6 / 0.75 - 1)
    assert tested["accuracy_low"] < 0.6 < tested["accuracy_high"]


def test_measure_keeps_the_per_image_record_of_the_test_split_only_when_asked():
    data = synthetic(num_classes=4, per_class=16, size=16, seed=0)
    torch.manual_seed(0)
    model = build_model("resnet8", 4, width=4)
    task = Task(data, 0.4)
    m = measure(model, task)
    correct = per_image_correct(model, data, "test")
    assert correct.dtype == bool and correct.size == data.size("test")
    assert np.array_equal(decode_bits(m.test_bits), correct) and m.test_ids == images_hash(data, "test")
    assert m.test_correct == int(correct.sum()) == evaluate(model, data, "test").correct
    rec = evaluation_record(m, m)
    assert rec["test_correct_bits"] == m.test_bits and rec["test_ids_hash"] == m.test_ids
    assert "test_bits" not in m.to_dict()
    untested = measure(model, task, test=False)
    assert untested.test_total == 0 and untested.test_bits is None and untested.test_ids is None
    other = synthetic(num_classes=4, per_class=16, size=16, seed=1)
    assert images_hash(other, "test") != images_hash(data, "test")


def test_compare_evaluations_needs_records_on_the_same_images():
    a = {"id": "a", "test_correct_bits": encode_bits([True, True, False]), "test_ids_hash": "h"}
    b = {"id": "b", "test_correct_bits": encode_bits([False, True, False]), "test_ids_hash": "h"}
    r = compare_evaluations(a, b)
    assert (r.b01, r.b10, r.p_value) == (0, 1, 1.0)
    with pytest.raises(ValidationError, match="different test images"):
        compare_evaluations(a, {**b, "test_ids_hash": "other"})
    with pytest.raises(ValidationError, match="no per-image test record"):
        compare_evaluations(a, {"id": "c", "test_correct_bits": None})
