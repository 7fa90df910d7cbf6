"""``bench/transfer_bench.py``'s summary: the transferred policy against the same seed's random episodes, and
whether the reuse and fresh runs differ by that policy alone (their records as ``_run`` writes them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from transfer_bench import summarise  # noqa: E402


def _run(kind: str, seed: int, screens: list[tuple[str, float]], step: float) -> dict:
    return {"kind": kind, "seed": seed, "compute": 2.0, "seconds": 10.0,
            "screens": [{"scheme": s, "val_accuracy": a, "pr": 0.41} for s, a in screens],
            "steps": [{"scheme": max(screens, key=lambda x: x[1])[0], "val_accuracy": step}],
            **({"uniform": {"val_accuracy": 0.5, "pr": 0.41}} if kind == "reuse" else {})}


def test_summary_ranks_the_transferred_policy_among_the_random_episodes_and_checks_the_pairing():
    runs = {"reuse-0": _run("reuse", 0, [("T", 0.7), ("a", 0.6), ("b", 0.8)], 0.85),
            "fresh-0": _run("fresh", 0, [("a", 0.6), ("b", 0.8), ("c", 0.4)], 0.84),
            # seed 1: the episodes after the transferred one are not the fresh run's: not paired
            "reuse-1": _run("reuse", 1, [("T", 0.9), ("x", 0.6)], 0.9),
            "fresh-1": _run("fresh", 1, [("y", 0.5), ("z", 0.7)], 0.8),
            "reuse-2": {"kind": "reuse", "seed": 2, "error": "RuntimeError: killed"}}
    s = summarise({"runs": runs})
    assert sorted(s["seeds"]) == [0, 1]  # a failed run is left out
    zero, one = s["seeds"][0], s["seeds"][1]
    assert zero["transferred"] == 0.7 and zero["beats"] == pytest.approx(2 / 3) and zero["paired"]
    assert zero["random_mean"] == pytest.approx(0.6) and zero["random_best"] == 0.8
    assert zero["best_reuse"] == zero["best_fresh"] == 0.8 and (zero["step_reuse"], zero["step_fresh"]) == (0.85, 0.84)
    assert one["beats"] == 1.0 and not one["paired"] and one["best_reuse"] == 0.9
    assert s["over"]["transferred"]["mean"] == pytest.approx(0.8) and s["over"]["transferred"]["n"] == 2
