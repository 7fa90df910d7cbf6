"""SIGKILL of a parallel search's driver mid-round (``workers=2``, a real subprocess, Ray and store): every step
that finished is in the store, in the round walk's order whatever order the steps finished in, only the step in
flight is lost, and the resumed run reads that history and ends with exactly the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from automc.catalog import scheme_key
from automc.kb import open_store
from automc.kb.states import State
from automc.search import STRATEGIES, SearchConfig, search
from automc.search._base import SearchStrategy, search_rows

pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]

A = "NS(finetune_epochs_factor=0.2,target_ratio_factor=0.1,max_layer_prune_ratio=0.7)"
B = "SFP(target_ratio_factor=0.1,sfp_epochs_factor=0.2,sfp_update_every=1)"
C = "SFP(target_ratio_factor=0.1,sfp_epochs_factor=0.2,sfp_update_every=3)"
D = "NS(finetune_epochs_factor=0.2,target_ratio_factor=0.1,max_layer_prune_ratio=0.9)"
E = "NS(finetune_epochs_factor=0.2,target_ratio_factor=0.3,max_layer_prune_ratio=0.7)"
F = "SFP(target_ratio_factor=0.1,sfp_epochs_factor=0.2,sfp_update_every=5)"
G = "NS(finetune_epochs_factor=0.2,target_ratio_factor=0.3,max_layer_prune_ratio=0.9)"
# Round 0 proposes A > B, C > D, E: the round walks A, A > B, C, C > D, E. Two workers start A and C; each arrival
# starts the walk's next ready step (A > B after A, C > D after C), so steps begin and finish out of the walk's order
# (A, C, A > B), and E has not begun when the first two-step scheme finishes.
SCHEMES = ((A, B), (C, D), (E,), (F,), (G,), (A, F), (C, B))
ROUND0 = [(A,), (A, B), (C,), (C, D), (E,)]
BUDGET = 7

# The driver: a search whose progress hook logs each finished step and, at the first two-step scheme to finish,
# tells the test and waits there (after that step's write, before the round's end) to be killed.
DRIVER = """
import json, sys, time
from pathlib import Path
from automc.search import STRATEGIES, SearchConfig, search
STRATEGIES._paths["fixed"] = "tests.search.test_parallel_kill:Fixed"
log, parked = Path(sys.argv[2]), Path(sys.argv[3])
def progress(event):
    if event.kind == "step":
        with log.open("a") as f:
            f.write(event.message.split(" ", 1)[1] + "\\n")
        if " > " in event.message:
            parked.touch()
            time.sleep(600)
search(SearchConfig(**json.loads(sys.argv[1])), progress=progress)
"""


class Fixed(SearchStrategy):
    """Proposes ``SCHEMES`` in order (those not evaluated, and not extending a failure); records each history."""

    name = "fixed"
    seen: ClassVar[list[list[tuple[str, ...]]]] = []

    def propose(self, history, n, rng):
        Fixed.seen.append([o.scheme for o in history])
        failed = {o.scheme for o in history if not o.ok}
        return [s for s in SCHEMES if s not in history and not any(s[:k] in failed for k in range(1, len(s)))][:n]


@pytest.mark.slow
def test_sigkill_of_a_parallel_driver_keeps_every_finished_step_and_resume_ends_with_the_budget(tmp_path,
                                                                                                 monkeypatch):
    store = f"ladybug://{tmp_path / 'kb'}"
    cfg = {"model": "smallcnn", "width": 4, "data": "digits", "train_epochs": 2.0, "target_pr": 0.4,
           "budget": 1000.0, "max_steps": BUDGET, "epochs": 0.3, "final_epochs": 0, "strategy": "fixed",
           "reuse": False, "per_round": 3,
           "max_length": 2, "batch_size": 64, "lr": 0.02, "device": "cpu", "store": store,
           "cache_dir": str(tmp_path / "cache"), "workers": 2}
    log, parked = tmp_path / "steps.log", tmp_path / "parked"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cfg), str(log), str(parked)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300  # Ray's start-up on a loaded 2-core machine, the base model, four steps
    try:
        while not parked.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the search never reached a step of the second wave"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray services it started (their workers end with them)
        proc.wait()
    finished = [scheme_key(x) for x in log.read_text().splitlines()]  # in the order they arrived
    assert 2 <= len(finished) <= 3 and len(finished[-1]) == 2 and all(len(k) == 1 for k in finished[:-1])

    with open_store(store, read_only=True) as s:  # read-only: as the kill left it (no stale marking)
        (run,) = s.list_runs()
        rows = s.run_evaluations(run["id"])
    state = {scheme_key(r["scheme"]): r["state"] for r in rows}
    # one step is still in flight (two workers), nothing else began; every step that finished was written as it
    # arrived (COMPLETE, or FAILED for a method's failure), in the walk's order, which a resumed run reads its
    # history in
    running = {k for k, v in state.items() if v == "RUNNING"}
    assert len(running) == 1 and running <= set(ROUND0) - set(finished)
    assert set(state) == set(finished) | running
    serial = [k for k in ROUND0 if k in finished]
    assert [scheme_key(r["scheme"]) for r in search_rows(rows)] == serial

    monkeypatch.setitem(STRATEGIES._paths, "fixed", f"{__name__}:Fixed")
    monkeypatch.setattr(Fixed, "seen", [])
    result = search(SearchConfig(resume=run["id"], store=store, device="cpu"))
    assert Fixed.seen[0] == serial  # the resumed run's first proposal sees the serial history
    with open_store(store) as s:
        rows = s.run_evaluations(run["id"])
        assert s.load_run(run["id"]).state == "COMPLETE"
    steps = [scheme_key(r["scheme"]) for r in search_rows(rows)]
    assert result.evaluations == BUDGET == len(steps) == len(set(steps))  # the budget, no scheme twice
    assert steps[:len(serial)] == serial
    assert all(r["state"] != "RUNNING" for r in rows)
    counted = {r["id"] for r in search_rows(rows)}
    lost = [r for r in rows if r["id"] not in counted]  # the step killed in flight, marked stale, evaluated again
    assert len(lost) == 1 and all(r["state"] == State.INTERRUPTED for r in lost)
