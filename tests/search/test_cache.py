"""The model cache: LRU eviction under a size cap, crash-safe entries (hostile files and full disks:
``test_cache_faults.py``)."""

from __future__ import annotations

import os

import pytest
import torch

from automc.compress.data import synthetic
from automc.compress.models import build_model
from automc.compress.train import predict
from automc.search.cache import ModelCache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet8", 4, width=4).eval()


def outputs(model, data):
    return predict(model, data, "test", device="cpu")


def test_cache_lru_and_crash_safety(model, tmp_path):
    cache = ModelCache(tmp_path / "c", max_bytes=10**9)
    cache.put(("a",), model)
    size = cache.size()
    cache = ModelCache(tmp_path / "c", max_bytes=int(2.5 * size))
    cache.put(("b",), model)
    os.utime(cache.path(("a",)), (1, 1))
    os.utime(cache.path(("b",)), (2, 2))
    assert cache.get(("a",)) is not None  # touching a makes b the least recently used
    cache.put(("c",), model)
    assert ("a",) in cache and ("c",) in cache and ("b",) not in cache
    data = synthetic(num_classes=4, per_class=4, size=16)
    assert torch.equal(outputs(cache.get(("c",)), data), outputs(model, data))
    # A half-written entry (a crash mid-write) reads as missing and is removed; temp files are not entries.
    cache.path(("a",)).write_bytes(cache.path(("a",)).read_bytes()[:100])
    (cache.directory / ".tmp-123.pt").write_bytes(b"partial")
    assert cache.get(("a",)) is None and ("a",) not in cache
    assert [p.name for _, _, p in cache.entries()] == [cache.path(("c",)).name]


def test_meta_and_failures_round_trip(model, tmp_path):
    cache = ModelCache(tmp_path / "c")
    cache.put(("a",), model, {"params": 7, "val_correct": 3, "val_total": 4})
    got, meta = cache.entry(("a",))
    assert meta == {"params": 7, "val_correct": 3, "val_total": 4}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in got.state_dict().items())
    assert cache.failure(("b",)) is None
    cache.put_failure(("b",), "CompressionError: no")
    assert ModelCache(tmp_path / "c").failure(("b",)) == "CompressionError: no"  # on disk: a new run sees it
    assert ("b",) not in cache
