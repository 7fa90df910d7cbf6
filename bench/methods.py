"""Each compression method alone at PR 0.4 and 0.7 with the same fine-tune budget (the paper's Table 2 shape),
plus the peer baseline: Torch-Pruning L2-magnitude group importance on the block-internal channels, pruned
by ``surgery`` and fine-tuned with the same budget with knowledge distillation from the unpruned model.

Usage (the CPU run committed under bench/results/):

    python bench/methods.py --weights ../shared/models/resnet20-cifar10.th \
        --data ../shared/datasets/cifar10-subset.npz --val-data ../shared/datasets/cifar10-val-jpeg.npz \
        --model resnet20 --epochs 2 \
        --methods NS,SFP,LeGR,HOS,LFB,LMA,TP-L2 --ratios 0.4,0.7 --threads 1 --out bench/results

Validation follows ``automc compress``: ``--val-data``, else the data's own validation part, else half of the
test part (``--val-from train`` carves it from the training part instead). Results are written after every run
(JSON, with the images each part came from) and rendered as markdown at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from automc.compress import METHODS
from automc.compress.base import Task, TrainBudget
from automc.compress.data import load_data
from automc.compress.layers import recalibrate_bn, train_inputs
from automc.compress.metrics import wilson_interval
from automc.compress.models import model_for_data
from automc.compress.scheme import measure
from automc.compress.surgery import analyse, prune_by_scores
from automc.compress.train import finetune

# One setting per method: a single step to the target (target_ratio_factor=1.0) and the same fine-tune
# budget (1.0 x epochs) everywhere; HOS splits it between its KD and plain fine-tune phases. LeGR spends an
# extra 0.4 x epochs on its evolutionary search and SFP trains its soft-pruned model for 1.0 x epochs.
SETTINGS: dict[str, dict[str, Any]] = {
    "NS": {"target_ratio_factor": 1.0, "finetune_epochs_factor": 1.0, "max_layer_prune_ratio": 0.9},
    "SFP": {"target_ratio_factor": 1.0, "sfp_epochs_factor": 1.0, "sfp_update_every": 1},
    "LeGR": {"target_ratio_factor": 1.0, "finetune_epochs_factor": 1.0, "max_layer_prune_ratio": 0.9,
             "ea_epochs_factor": 0.4, "ea_finetune_epochs_factor": 0.01, "filter_criterion": "l2_weight"},
    "HOS": {"target_ratio_factor": 1.0, "finetune_epochs_factor": 0.5, "kd_finetune_epochs_factor": 0.5},
    "LFB": {"target_ratio_factor": 1.0, "finetune_epochs_factor": 1.0},
    "LMA": {"target_ratio_factor": 1.0, "finetune_epochs_factor": 1.0},
}
PAPER_AR_RESNET56_04 = {"LeGR": -0.38, "HOS": -0.95, "LFB": -1.15, "NS": -2.03, "SFP": -3.07, "LMA": -12.56}


def tp_l2_baseline(model: torch.nn.Module, task: Task, ratio: float, epochs: float) -> torch.nn.Module:
    """Torch-Pruning ``MagnitudeImportance(p=2)`` (group L2, mean-normalised) + surgery + BN re-estimation
    + KD fine-tune."""
    import torch_pruning as tp

    example = task.data.example_input()
    student = copy.deepcopy(model).to(task.device)
    an = analyse(student, example)
    imp = tp.importance.MagnitudeImportance(p=2)
    scores = {}
    for name, lay in an.layers.items():
        group = an.graph.get_pruning_group(lay.conv, tp.prune_conv_out_channels, idxs=list(range(lay.channels)))
        scores[name] = imp(group).detach().cpu()
    student, _ = prune_by_scores(student, scores, ratio, 0.9, example)
    recalibrate_bn(student, train_inputs(task))
    finetune(student, task, epochs, teacher=model, kd_alpha=0.5, kd_temperature=4.0)
    return student


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_data(args.data, val_data=args.val_data, val_from=args.val_from, fraction=args.data_fraction,
                     seed=args.seed, device=dev)
    base = model_for_data(args.model, data, args.weights)
    budget = TrainBudget(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, distill_alpha=args.distill_alpha)
    task = Task(data, 0.4, budget, dev, args.seed)
    t0 = time.perf_counter()
    before = measure(base, task)
    out: dict[str, Any] = {
        "model": args.model, "data": str(args.data), "epochs": args.epochs, "lr": args.lr,
        "distill_alpha": args.distill_alpha,
        "batch_size": args.batch_size, "seed": args.seed, "device": str(dev), "machine": machine(),
        "train_images": data.size("train"), "val_images": data.size("val"), "test_images": data.size("test"),
        "sources": data.sources,
        "settings": {m: SETTINGS.get(m, "Torch-Pruning MagnitudeImportance(p=2) + KD(T=4, alpha=0.5)")
                     for m in args.methods},
        "base": {**before.to_dict(), "seconds": time.perf_counter() - t0}, "runs": []}
    path = Path(args.out) / f"methods-{args.model}-{dev.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for ratio in args.ratios:
        for method in args.methods:
            task.target_pr = ratio
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            row: dict[str, Any] = {"method": method, "target_pr": ratio}
            try:
                if method == "TP-L2":
                    model = tp_l2_baseline(base, task, ratio, args.epochs)
                else:
                    model = METHODS[method]().compress(base, task, SETTINGS[method], ratio)
                m = measure(model, task)
                row.update(m.to_dict(), pr=1 - m.params / before.params, fr=1 - m.flops / before.flops,
                           ar=(m.acc_test - before.acc_test) / before.acc_test)
            except Exception as e:  # noqa: BLE001 - a failing method is a result too
                row["error"] = f"{type(e).__name__}: {e}"
            row["seconds"] = time.perf_counter() - t
            out["runs"].append(row)
            print(json.dumps({k: row.get(k) for k in ("method", "target_pr", "pr", "acc_test", "ar", "seconds",
                                                      "error")}), flush=True)
            out["total_seconds"] = time.perf_counter() - t0
            path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".md").write_text(markdown(out))
    return out


def markdown(res: dict[str, Any]) -> str:
    b = res["base"]
    lo, hi = b["acc_test_ci95_low"], b["acc_test_ci95_high"]
    mach = res["machine"]
    lines = [
        f"# Compression methods alone: {res['model']} on {Path(res['data']).name}",
        "",
        f"Machine: {mach['processor']}, {mach['cpus']} CPUs ({mach['torch_threads']} torch threads, shared), "
        f"torch {mach['torch']}, device {res['device']}. Fine-tune budget: {res['epochs']} epochs "
        f"(batch {res['batch_size']}, lr {res['lr']}, SGD + Nesterov, cosine) on {res['train_images']} training "
        f"images; validation {res['val_images']}; test {res['test_images']} images{_sources(res)}. Total "
        f"{res.get('total_seconds', 0) / 60:.1f} min.",
        "",
        f"Base model: {b['params']:,} parameters, {b['flops'] / 1e6:.1f} MFLOPs (2 per MAC), test accuracy "
        f"{b['acc_test']:.2%} [{lo:.2%}, {hi:.2%}].",
        "",
        "| target PR | method | params | PR | MFLOPs | FR | test acc [95% CI] | AR (relative) | paper AR "
        "(ResNet-56, PR 0.4) | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        paper = PAPER_AR_RESNET56_04.get(r["method"])
        paper_s = f"{paper:+.2f}%" if paper is not None and r["target_pr"] == 0.4 else ""
        if "error" in r:
            lines.append(f"| {r['target_pr']} | {r['method']} | failed: {r['error'][:120]} | | | | | | {paper_s} "
                         f"| {r['seconds']:.0f} |")
            continue
        ci = wilson_interval(r["test_correct"], r["test_total"])
        lines.append(
            f"| {r['target_pr']} | {r['method']} | {r['params']:,} | {r['pr']:.1%} | {r['flops'] / 1e6:.1f} | "
            f"{r['fr']:.1%} | {r['acc_test']:.2%} [{ci[0]:.1%}, {ci[1]:.1%}] | {r['ar']:+.2%} | {paper_s} | "
            f"{r['seconds']:.0f} |")
    lines += ["", "Settings per method (catalogue hyperparameters; missing ones take the grid's middle value):", ""]
    for m, s in res["settings"].items():
        lines.append(f"- {m}: `{json.dumps(s)}`")
    lines.append("")
    return "\n".join(lines)


def _sources(res: dict[str, Any]) -> str:
    src = res.get("sources")
    return f" (fine-tune: {src['train']}; validation: {src['val']}; test: {src['test']})" if src else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--methods", default="NS,SFP,LeGR,HOS,LFB,LMA,TP-L2",
                    type=lambda s: [m.strip() for m in s.split(",") if m.strip()])
    ap.add_argument("--ratios", default="0.4,0.7", type=lambda s: [float(r) for r in s.split(",")])
    ap.add_argument("--epochs", default=3.0, type=float)
    ap.add_argument("--lr", default=0.01, type=float)
    ap.add_argument("--distill-alpha", default=TrainBudget.distill_alpha, type=float,
                    help="KD weight of NS/SFP/LeGR fine-tuning from the step's input model (0: labels only)")
    ap.add_argument("--batch-size", default=128, type=int)
    ap.add_argument("--data-fraction", default=1.0, type=float, help="stratified share of the training part")
    ap.add_argument("--val-data", default=None, type=Path,
                    help="validation images (.npz with x_val/y_val or x_test/y_test, or class folders)")
    ap.add_argument("--val-from", default="test", choices=("test", "train"),
                    help="without a validation part: half of the test part (default) or 10%% of the training part")
    ap.add_argument("--seed", default=0, type=int)
    ap.add_argument("--threads", default=1, type=int, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="bench/results", type=Path)
    args = ap.parse_args()
    unknown = [m for m in args.methods if m != "TP-L2" and m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}, TP-L2")
    run(args)


if __name__ == "__main__":
    main()
