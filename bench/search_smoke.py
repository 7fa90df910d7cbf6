"""One progressive search on the shared CIFAR-10 data: its front, seconds per evaluation, and the share of wall time
spent outside fine-tuning (search overhead: F_mo, store writes, caching, measuring).

Usage (the GPU run committed under bench/results/; paths are arguments, nothing is copied):

    python bench/search_smoke.py --model resnet56 --weights ../shared/models/resnet56-cifar10.th \\
        --data ../shared/datasets/cifar10-subset.npz --val-data ../shared/datasets/cifar10-val-jpeg.npz \\
        --budget 30 --epochs 0.5 --final-epochs 5 --device cuda --out bench/out/smoke --results bench/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from search_bench import machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--val-data", type=Path, required=True)
    p.add_argument("--target-pr", type=float, default=0.4)
    p.add_argument("--budget", type=int, default=30)
    p.add_argument("--epochs", type=float, default=0.5)
    p.add_argument("--final-epochs", type=float, default=5.0)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--store", default=None)
    p.add_argument("--out", type=Path, default=Path("bench/out/smoke"))
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    from automc.search import SearchConfig, search

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or f"ladybug://{(args.out / 'kb.lbug').resolve()}"
    t0 = time.time()
    res = search(SearchConfig(model=args.model, weights=str(args.weights), data=str(args.data),
                              val_data=str(args.val_data), target_pr=args.target_pr, budget=args.budget,
                              epochs=args.epochs, final_epochs=args.final_epochs, top_k=args.top_k, seed=args.seed,
                              device=args.device, store=store, out=str(args.out / "run"),
                              cache_dir=str(args.out / "cache")))
    wall = time.time() - t0
    out = {"machine": machine(args.device), "args": {k: str(v) for k, v in vars(args).items()}, "wall": wall,
           "seconds_per_evaluation": res.seconds / max(1, res.evaluations), **res.to_dict()}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "search_smoke.json").write_text(json.dumps(out, indent=1, default=str))
    m = out["machine"]
    lines = ["# One progressive search (`bench/search_smoke.py`)", "",
             f"Machine: {m.get('gpu', 'CPU only')}; {m.get('cpu', '')} ({m.get('cpus')} cores), "
             f"torch {m.get('torch')}. "
             f"{args.model} on `{args.data.name}` (fine-tune on its train part), selection on `{args.val_data.name}` "
             f"(JPEG, never seen by the base model), test on the 1 017 exact test images; gamma {args.target_pr}, "
             f"budget {args.budget} steps at {args.epochs} epochs, final fine-tune {args.final_epochs} epochs of the "
             f"top "
             f"{args.top_k}.", "",
             f"- wall time {wall:.0f} s (the whole call: data, model, store, search, final fine-tune, report); "
             f"{out['seconds_per_evaluation']:.1f} s per evaluated step",
             f"- share of the search's wall time outside method training (F_mo, proposals, store writes, caching, "
             f"measuring): **{res.overhead:.1%}**",
             f"- evaluations: {res.evaluations} ({res.failed} failed); reuse: {res.reuse}", "",
             "| scheme | PR | FR | val acc (JPEG) | test acc [95% CI] | fidelity |", "|---|---|---|---|---|---|"]
    for r in res.front:
        lines.append(f"| `{r['scheme']}` | {r['pr']:.1%} | {r['fr']:.1%} | {r['val_accuracy']:.2%} | "
                     f"{r['test_accuracy']:.2%} [{r['test_low']:.1%}, {r['test_high']:.1%}] | {r.get('fidelity')} |")
    (args.results / "search_smoke.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
