"""``search(workers=2)`` through a local Ray instance against the serial search: same schemes and front, one writer."""

from __future__ import annotations

import os

import pytest

from automc.kb import open_store
from automc.search import search, storage
from tests.search.test_run import config, write_inputs

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"), seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random"])
def test_two_workers_find_what_one_finds_and_only_the_driver_writes(inputs, tmp_path, strategy):
    runs = {}
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        cfg = config(inputs, d, strategy=strategy, budget=6, per_round=4, workers=workers, seed=3)
        res = search(cfg)
        with open_store(cfg.store) as s:
            rows = storage.run_evaluations(s, res.run_id)
            owners = s.query("MATCH (e:Evaluation) RETURN DISTINCT e.pid AS pid")
        runs[workers] = (res, rows, owners)
    (r1, rows1, _), (r2, rows2, owners2) = runs[1], runs[2]
    assert len(rows1) == len(rows2) == 6  # exactly the budget, in the store
    assert [r["scheme"] for r in rows1] == [r["scheme"] for r in rows2]  # same schemes, same (serial) order
    for a, b in zip(rows1, rows2, strict=True):
        assert a["state"] == b["state"]
        if a["state"] == "COMPLETE":
            assert a["params"] == b["params"] and a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.02)
    assert [f["scheme"] for f in r1.front] == [f["scheme"] for f in r2.front]
    assert [o["pid"] for o in owners2] == [os.getpid()]  # every record written by the driver, none by a worker
