"""``search(workers=2)`` through a local Ray instance against the serial search: same schemes and front, one writer."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from automc.kb import open_store
from automc.kb.states import State
from automc.search import search
from tests.search.test_study import config, write_inputs

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
        cfg = config(inputs, d, strategy=strategy, max_steps=6, per_round=4, workers=workers, seed=3)
        res = search(cfg)
        with open_store(cfg.store) as s:
            rows = s.run_evaluations(res.run_id)
            owners = s.query("MATCH (e:Evaluation) RETURN DISTINCT e.pid AS pid")
        runs[workers] = (res, rows, owners)
    (r1, rows1, _), (r2, rows2, owners2) = runs[1], runs[2]
    assert len(rows1) == len(rows2) == 6  # exactly the budget, in the store
    assert [r["scheme"] for r in rows1] == [r["scheme"] for r in rows2]  # same schemes, same (serial) order
    for a, b in zip(rows1, rows2, strict=True):
        assert a["state"] == b["state"]
        if a["state"] == "COMPLETE":
            assert a["params"] == b["params"] and a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.02)
            # a Ray worker meters its step as the driver's process does (``compress.compute``: per process)
            assert a["compute"] > 0 and a["compute"] == pytest.approx(b["compute"])
    assert [f["scheme"] for f in r1.front] == [f["scheme"] for f in r2.front]
    assert [o["pid"] for o in owners2] == [os.getpid()]  # every record written by the driver, none by a worker


def _step_workers() -> list[int]:
    """Ray worker processes running a search step now (Ray titles a busy worker ``ray::<task name>``)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::automc-step"):
            found.append(int(d.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds Ray's worker processes through /proc")
def test_a_worker_killed_mid_search_costs_one_evaluation_and_the_search_finishes(inputs, tmp_path):
    killed: list[int] = []

    def killer() -> None:  # SIGKILL the first worker seen running a step, once
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for pid in _step_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    cfg = config(inputs, tmp_path / "killed", strategy="random", max_steps=6, per_round=4, workers=2, seed=3,
                 epochs=1.0)
    res = search(cfg)
    thread.join(timeout=5)
    assert len(killed) == 1
    with open_store(cfg.store) as s:
        rows = s.run_evaluations(res.run_id)
        owners = s.query("MATCH (e:Evaluation) RETURN DISTINCT e.pid AS pid")
        run = s.query("MATCH (r:SearchRun {id: $id}) RETURN r.state AS state", {"id": res.run_id})
    assert run[0]["state"] == "COMPLETE" and len(rows) == 6 == res.evaluations  # the budget, and the search ended
    assert [o["pid"] for o in owners] == [os.getpid()]
    lost = [r for r in rows if r["state"] == State.FAILED and "worker lost" in (r.get("error") or "")]
    assert len(lost) <= 1  # the killed step was retried (COMPLETE) or, at worst, that one step is FAILED
    # A retried step computes what an undisturbed one does: the serial run evaluates the same schemes alike.
    serial = search(config(inputs, tmp_path / "serial", strategy="random", max_steps=6, per_round=4, workers=1, seed=3,
                           epochs=1.0))
    with open_store(serial.store) as s:
        expected = s.run_evaluations(serial.run_id)
    assert [r["scheme"] for r in rows] == [r["scheme"] for r in expected]
    if not lost:
        assert [(r["state"], r["params"]) for r in rows] == [(r["state"], r["params"]) for r in expected]
        assert [f["scheme"] for f in res.front] == [f["scheme"] for f in serial.front]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds Ray's worker processes through /proc")
@pytest.mark.parametrize("strategy", ["amc", "seernet"])
def test_two_workers_screen_an_episode_batch_side_by_side_and_learn_what_one_learns(inputs, tmp_path, strategy):
    """A per-layer strategy's round of rung-0 screenings goes to the workers together (two run at once), and the
    strategy sees them in its own order: the same episodes, scores and promotions as one worker."""
    batch = "amc_episodes" if strategy == "amc" else "seernet_policies"
    runs, busy = {}, {1: 0, 2: 0}
    for workers in (1, 2):
        stop = threading.Event()

        def sample(w: int = workers, stop: threading.Event = stop) -> None:  # the most step workers busy at once
            while not stop.is_set():
                busy[w] = max(busy[w], len(_step_workers()))
                time.sleep(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        cfg = config(inputs, tmp_path / f"w{workers}", strategy=strategy, max_steps=2, per_round=1, workers=workers,
                     seed=3, strategy_options={batch: 4, f"{strategy}_warmup": 4, f"{strategy}_val_images": 0})
        try:
            res = search(cfg)
        finally:
            stop.set()
            thread.join(timeout=5)
        with open_store(cfg.store) as s:
            runs[workers] = s.run_evaluations(res.run_id)
    one, two = runs[1], runs[2]
    assert [r["scheme"] for r in one] == [r["scheme"] for r in two]  # same episodes, same promotions
    assert [(r["fidelity"], r["state"], r["params"]) for r in one] == [(r["fidelity"], r["state"], r["params"])
                                                                        for r in two]
    screens = [r for r in two if r["fidelity"] == "screen"]
    assert len(screens) == 8 and all(r["rung"] == 0 for r in screens)
    assert busy[2] == 2  # the batch ran side by side (one worker runs in the driver: no Ray worker at all)
