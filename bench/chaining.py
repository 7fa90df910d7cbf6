"""Which method can follow which: every ordered pair (A, B) of the six methods, A then B, on a tiny trained
ResNet-8 (width 8) on the synthetic task at each gamma, plus every method once the target is reached (ratio 0),
and whether every chained model survives the evaluator cache's save/rebuild unchanged.

Step 1 removes ``0.5 * gamma`` of the parameters (``target_ratio_factor=0.5``), step 2 the rest of the
target (``target_ratio_factor=1.0``), the other hyperparameters at their grid's middle value and a small
fine-tune budget. Records success or the error and the seconds of each step; the search rules in
``catalog.toml``'s ``[search]`` table are chosen from this (see bench/results/chaining.md).

Usage: ``python bench/chaining.py --out bench/results`` (a few minutes on one CPU thread).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from automc.catalog import load_catalog
from automc.compress import METHODS
from automc.compress.base import Task, TrainBudget, step_ratio
from automc.compress.data import synthetic
from automc.compress.metrics import count_params
from automc.compress.models import build_model
from automc.compress.train import evaluate, finetune


def params_for(method: str, factor: float) -> dict[str, Any]:
    """The grid's middle values with ``target_ratio_factor`` overridden (the implementation reads any value)."""
    grid = load_catalog().method(method).grid
    p = {k: v[len(v) // 2] for k, v in grid.items()}
    p["target_ratio_factor"] = factor
    return p


def round_trip(model: torch.nn.Module, base: torch.nn.Module, x: torch.Tensor) -> str:
    """Why ``model`` does not survive the evaluator cache's format (describe + rebuild + strict state dict) with
    identical outputs; empty when it does."""
    from automc.compress.saving import describe, rebuild

    try:
        again = rebuild(json.loads(json.dumps(describe(model))), copy.deepcopy(base))
        again.load_state_dict(model.state_dict(), strict=True)
        model.eval()
        again.eval()
        with torch.no_grad():
            same = torch.equal(model.cpu()(x), again(x))
        return "" if same else "outputs differ after rebuild"
    except Exception as e:  # noqa: BLE001 - recorded
        return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def step(model: torch.nn.Module, method: str, task: Task, p0: int, factor: float) -> dict[str, Any]:
    ratio = step_ratio(task.target_pr, p0, count_params(model), factor)
    t = time.perf_counter()
    torch.manual_seed(0)
    try:
        out = METHODS[method]().compress(model, task, params_for(method, factor), ratio)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - the point is to record what fails
        return {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300], "ratio": ratio,
                "seconds": time.perf_counter() - t, "where": traceback.format_exc().splitlines()[-3].strip()}
    seconds = time.perf_counter() - t
    return {"ok": True, "ratio": ratio, "seconds": seconds, "params": count_params(out),
            "pr": 1 - count_params(out) / p0, "acc": evaluate(out, task.data, "test").top1, "model": out}


def chain_all(base: torch.nn.Module, data: Any, gamma: float, epochs: float, x: torch.Tensor) -> dict[str, Any]:
    """Every method, then every method after it, then every method once the target is reached, at ``gamma``."""
    task = Task(data, gamma, TrainBudget(epochs=epochs, batch_size=32, lr=0.05), seed=0)
    p0 = count_params(base)
    methods = list(METHODS)
    first = {m: step(base, m, task, p0, 0.5) for m in methods}
    rows = []
    for a in methods:
        s1 = first[a]
        for b in methods:
            row = {"first": a, "second": b, "first_ok": s1["ok"], "first_error": s1.get("error", ""),
                   "first_seconds": s1["seconds"], "first_pr": s1.get("pr")}
            if s1["ok"]:
                s2 = step(copy.deepcopy(s1["model"]), b, task, p0, 1.0)
                row.update({f"second_{k}": v for k, v in s2.items() if k != "model"})
                if s2["ok"]:
                    row["second_round_trip"] = round_trip(s2["model"], base, x)
            rows.append(row)
            print(gamma, a, b, row.get("second_ok"), row.get("second_error", ""), row.get("second_round_trip", ""),
                  flush=True)
    # After the target is reached every later step gets ratio 0: does each method survive that (after each
    # method)? A task whose target is the PR the first step reached has reached it.
    reached = []
    for a in methods:
        if not first[a]["ok"]:
            continue
        t_reached = Task(data, first[a]["pr"], task.budget, seed=0)
        for b in methods:
            s = step(copy.deepcopy(first[a]["model"]), b, t_reached, p0, 1.0)
            reached.append({"first": a, "method": b, **{k: v for k, v in s.items() if k != "model"}})
            print(gamma, "reached", a, b, s["ok"], s.get("error", ""), flush=True)
    return {"gamma": gamma, "first": {m: {k: v for k, v in s.items() if k != "model"} for m, s in first.items()},
            "pairs": rows, "target_reached": reached}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--epochs", type=float, default=2.0, help="fine-tune budget (the epochs factors scale it)")
    ap.add_argument("--gammas", default="0.5,0.8", help="parameter-reduction targets, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from bench._common import machine

    data = synthetic()
    torch.manual_seed(0)
    base = build_model("resnet8", data.num_classes, width=8)
    finetune(base, Task(data, 0.5, TrainBudget(epochs=8, batch_size=32, lr=0.05)), 8)
    x = data.example_input(8)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "epochs": args.epochs, "base_params": count_params(base),
                              "base_acc": evaluate(base, data, "test").top1, "runs": []}
    for gamma in (float(g) for g in args.gammas.split(",")):
        result["runs"].append(chain_all(base, data, gamma, args.epochs, x))
    result["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaining.json").write_text(json.dumps(result, indent=1))
    print(f"done in {result['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
