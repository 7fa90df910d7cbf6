"""F_mo's training on the project's own steps: the fixed 10 epochs against training to a held-out patience rule.

Data: the 300 search steps of the committed benchmark (``bench/results/search_bench.json``: 15 runs, ResNet-20,
the same base model and validation set, so a one-step scheme's parent accuracy is the base's). Leave one run out:
F_mo is fitted on the other 14 runs' steps and predicts the left-out run's steps; reported: the training loss
reached, optimiser steps, seconds, and the Spearman and MSE of predicted vs observed step AR on the left-out run,
beside the per-method/strategy prior (``progressive.prior_ar``). Run: ``python bench/fmo_fit.py`` (CPU, ~2 min).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from automc.catalog import scheme_key
from automc.search._base import StepRecord
from automc.search.predictor import Predictor
from automc.search.progressive import prior_ar
from automc.search.space import SearchSpace

HERE = Path(__file__).resolve().parent
TASK = (1.0,) * 8


def steps(path: Path) -> dict[str, list[StepRecord]]:
    """Each run's steps (child vs parent on validation accuracy) from the benchmark's stored evaluations."""
    d = json.loads(path.read_text())
    base = next(r["val"] for r in d["honesty"]["rows"] if r["scheme"] == "")
    out: dict[str, list[StepRecord]] = {}
    for name, run in d["strategies"].items():
        rows = {scheme_key(e["scheme"]): e for e in run["evaluated"] if e["fidelity"] == "search"
                and e["state"] == "COMPLETE" and e.get("val_accuracy") is not None}
        recs = []
        for key, e in rows.items():
            parent = rows.get(key[:-1]) if len(key) > 1 else {"val_accuracy": base, "pr": 0.0}
            if parent is None or not parent["val_accuracy"]:
                continue
            kept = (1 - e["pr"]) / (1 - parent["pr"])
            recs.append(StepRecord(key[:-1], key[-1], name, TASK, e["val_accuracy"] / parent["val_accuracy"] - 1,
                                   1 - kept))
        out[name] = recs
    return out


def evaluate(space: SearchSpace, train: list[StepRecord], test: list[StepRecord], mode: str) -> dict:
    p = Predictor(space, {}, len(TASK), seed=0, batch_size=64 if mode == "old" else 256)
    t = time.perf_counter()
    if mode == "old":  # what progressive did: 10 epochs of batches of 64, at most 100 steps
        steps = min(10 * math.ceil(len(train) / 64), 100)
        p.fit(train, max_steps=steps, patience=None)
    else:
        p.fit(train)
    seconds = time.perf_counter() - t
    y = np.array([r.step_ar for r in test])
    pred = p.predict([r.parent for r in test], [r.strategy for r in test], TASK)
    return {"steps": p.last_fit["steps"], "stopped": p.last_fit["stopped"], "train_loss": p.last_fit["loss"],
            "seconds": seconds, "spearman": float(spearmanr(pred, y).statistic), "mse": float(np.mean((pred - y) ** 2))}


def main() -> None:
    torch.set_num_threads(1)
    space = SearchSpace()
    runs = steps(HERE / "results" / "search_bench.json")
    rows = []
    for name, test in runs.items():
        train = [r for other, recs in runs.items() if other != name for r in recs]
        row = {"left_out": name, "n_train": len(train), "n_test": len(test)}
        for mode in ("old", "new"):
            row[mode] = evaluate(space, train, test, mode)
        y = np.array([r.step_ar for r in test])
        pri = prior_ar(train, [r.strategy for r in test])
        row["prior"] = {"spearman": float(spearmanr(pri, y).statistic), "mse": float(np.mean((pri - y) ** 2))}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    summary = {}
    for k in ("old", "new", "prior"):
        sp = np.array([r[k]["spearman"] for r in rows])
        summary[k] = {"spearman_mean": float(np.nanmean(sp)), "spearman_sd": float(np.nanstd(sp)),
                      "mse_mean": float(np.mean([r[k]["mse"] for r in rows]))}
        if k != "prior":
            summary[k].update({f"{m}_mean": float(np.mean([r[k][m] for r in rows]))
                               for m in ("steps", "train_loss", "seconds")})
    out = {"machine": "2-core CPU VM, torch " + torch.__version__, "runs": rows, "summary": summary}
    (HERE / "results" / "fmo_fit.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
