"""Final model of a searched scheme: "reapply" (the scheme again from the base model with its shares of the final
budget, then a distillation polish) against "polish" (the searched model, polished for the whole final budget).

Every final model gets the same total (``--final-epochs``, ``compress.budget.final_split``) and distils from the base
model; the searched model is made at the search's default fidelity (``search.config.DEFAULTS``). Each (seed, scheme,
mode) run is saved to the JSON as it finishes and skipped when the bench is run again. Paired exact McNemar of the
two modes on the same test images per (seed, scheme) (``automc.compress.paired``).

    python bench/final_mode.py --data ../shared/datasets/cifar10-search.npz \\
        --weights ../shared/models/resnet20-cifar10.th --final-epochs 3 --seeds 0,1 \\
        --json bench/results/final_mode.json --md bench/results/final_mode.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

SCHEMES = ("SFP(target_ratio_factor=1.0)", "NS(target_ratio_factor=0.5) > SFP(target_ratio_factor=1.0)",
           "LMA(target_ratio_factor=1.0)")
MODES = ("reapply", "polish")


def run_key(seed: int, scheme: str, mode: str) -> str:
    return f"{seed}|{scheme}|{mode}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--target-pr", type=float, default=0.4)
    ap.add_argument("--final-epochs", type=float, default=3.0)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--schemes", default=";".join(SCHEMES), help="';'-separated")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--md", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/automc-final-mode-cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render", action="store_true", help="only write the markdown of the JSON")
    args = ap.parse_args()
    result: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
    if not args.render:
        measure_all(args, result)
    args.md.write_text(render(result))


def measure_all(args: argparse.Namespace, result: dict[str, Any]) -> None:
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import load_data
    from automc.compress.models import model_for_data
    from automc.search.config import DEFAULTS
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace
    from bench._common import machine

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    data = load_data(args.data, device=cpu)
    base = model_for_data(args.model, data, args.weights)
    space = SearchSpace()
    search_budget = TrainBudget(epochs=float(DEFAULTS["epochs"]), batch_size=int(DEFAULTS["batch_size"]),
                                lr=float(DEFAULTS["lr"]))
    final_budget = TrainBudget(epochs=float(args.final_epochs), batch_size=int(DEFAULTS["batch_size"]),
                               lr=float(DEFAULTS["lr"]))
    frac = float(DEFAULTS["data_fraction"])
    search_data = data if frac >= 1 else load_data(args.data, fraction=frac, device=cpu)
    result.setdefault("protocol", {
        "model": args.model, "weights": str(args.weights), "data": str(args.data), "target_pr": args.target_pr,
        "final_epochs": args.final_epochs, "search_epochs": search_budget.epochs, "search_data_fraction": frac,
        "train_images": data.size("train"), "val_images": data.size("val"), "test_images": data.size("test"),
        "cap": space.rules.max_epochs_factor_sum, "distill_alpha": final_budget.distill_alpha,
        "distill_temperature": final_budget.distill_temperature, "machine": machine(),
        "date": time.strftime("%Y-%m-%d", time.gmtime())})
    evaluators: dict[int, Any] = {}
    # scheme by scheme, both seeds each: a bench cut short still has paired seeds of the schemes it measured
    for text in (t.strip() for t in args.schemes.split(";")):
        key = space.parse(text)
        for seed in (int(s) for s in args.seeds.split(",")):
            if seed not in evaluators:
                evaluators[seed] = Evaluator(base, Task(search_data, args.target_pr, search_budget, cpu, seed),
                                             cache_dir=args.cache_dir / f"seed{seed}", seed=seed, space=space,
                                             data_fraction=frac)
            ev = evaluators[seed]
            final_task = Task(data, args.target_pr, final_budget, cpu, seed)
            for mode in MODES:
                k = run_key(seed, text, mode)
                if k in result["runs"]:
                    continue
                t0 = time.perf_counter()
                entry = ev.cache.entry(key)  # the searched model, made once per (seed, scheme)
                if entry is None:
                    searched = ev.evaluate(key).val_accuracy
                else:
                    searched = int(entry[1]["val_correct"]) / int(entry[1]["val_total"])
                search_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                r, _ = ev.final(key, final_task, mode=mode)
                m = r.measured
                result["runs"][k] = {
                    "seed": seed, "scheme": text, "mode": mode, "ok": r.ok, "error": r.error,
                    "split": ev.final_split(key, args.final_epochs, mode).to_dict(),
                    "search_val_accuracy": searched, "search_seconds": search_s,
                    "val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("accuracy"), "pr": m.get("pr"),
                    "fr": m.get("fr"), "seconds": time.perf_counter() - t0, "train_seconds": r.train_seconds,
                    "test_correct_bits": m.get("test_correct_bits"), "test_ids_hash": m.get("test_ids_hash")}
                result["seconds"] = sum(float(x["seconds"]) + float(x["search_seconds"])
                                        for x in result["runs"].values())
                args.json.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.json.with_suffix(".tmp")
                tmp.write_text(json.dumps(result, indent=1))
                tmp.replace(args.json)
                print(f"{k}: test {m.get('accuracy')}, val {m.get('val_accuracy')}, pr {m.get('pr')}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)


def _acc(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _pr(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def render(result: dict[str, Any]) -> str:
    """The markdown: protocol, per seed, mean ± sd per scheme and mode, paired McNemar per (seed, scheme)."""
    from automc.compress.paired import decode_bits, mcnemar

    p, runs = result.get("protocol", {}), list(result["runs"].values())
    mach = p.get("machine", {})
    out = ["# Final model: reapply vs polish (issue 16, item 3)", "",
           f"Protocol: {p.get('model')} ({p.get('weights')}), {p.get('data')} ({p.get('train_images')} train / "
           f"{p.get('val_images')} val / {p.get('test_images')} test images), γ = {p.get('target_pr')}; searched "
           f"model at the search's default fidelity ({p.get('search_epochs')} epoch × the scheme's factors, data "
           f"fraction {p.get('search_data_fraction')}); every final model trains **{p.get('final_epochs')} epochs in "
           f"total** (reapply: step i gets E × f_i / {p.get('cap')}, the rest is a polish; polish: all E continuing "
           f"the searched model), distilling from the base model (α = {p.get('distill_alpha')}, T = "
           f"{p.get('distill_temperature')}). Sized for ~25 min of CPU (3 schemes × 2 seeds planned, E = 3 "
           f"instead of the default 10); runs not in the tables below were not measured in the session's time. Wall "
           f"seconds depend on load: 2 cores shared by 5 sessions.",
           f"Machine: {mach.get('cpu')}, {mach.get('cores')} cores, torch {mach.get('torch')}, "
           f"{mach.get('torch_threads')} threads; {p.get('date')}; measured time {result.get('seconds', 0):.0f} s.",
           "", "Command: `python bench/final_mode.py --data ../shared/datasets/cifar10-search.npz --weights "
           f"../shared/models/resnet20-cifar10.th --final-epochs {p.get('final_epochs')} --seeds ... --json ... "
           "--md ...`", "",
           "| seed | scheme | mode | PR | val acc | test acc | search val acc | steps' epochs | polish epochs | s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["scheme"], r["seed"], r["mode"])):
        sp = r["split"]
        out.append(f"| {r['seed']} | {r['scheme']} | {r['mode']} | "
                   f"{_pr(r['pr'])} | {_acc(r['val_accuracy'])} | "
                   f"{_acc(r['test_accuracy'])} | {_acc(r['search_val_accuracy'])} | "
                   f"{' + '.join(f'{e:.2f}' for e in sp['steps']) or '0'} | {sp['polish']:.2f} | "
                   f"{r['seconds']:.0f} |" if r["ok"] else
                   f"| {r['seed']} | {r['scheme']} | {r['mode']} | FAILED: {r['error']} ||||||| |")
    schemes = sorted({r["scheme"] for r in runs})
    for field, what in (("test_accuracy", "test accuracy"), ("val_accuracy", "validation accuracy")):
        out += ["", f"Mean ± sd over seeds ({what}, %):", "", "| scheme | reapply | polish |", "|---|---|---|"]
        for s in [*schemes, "all"]:
            cells = []
            for mode in MODES:
                v = [float(r[field]) for r in runs if r["mode"] == mode and r["ok"]
                     and (s == "all" or r["scheme"] == s) and r[field] is not None]
                cells.append(f"{_ms(v)} (n={len(v)})")
            out.append(f"| {s} | {cells[0]} | {cells[1]} |")
    out += ["", "Paired exact McNemar, reapply (A) vs polish (B), same test images:", "",
            "| seed | scheme | only reapply right | only polish right | p |", "|---|---|---|---|---|"]
    by = {(r["seed"], r["scheme"], r["mode"]): r for r in runs if r["ok"] and r.get("test_correct_bits")}
    pairs: list[tuple[dict[str, Any], dict[str, Any], float]] = []
    for (seed, scheme, mode), a in sorted(by.items()):
        b = by.get((seed, scheme, "polish"))
        if mode != "reapply" or b is None or a["test_ids_hash"] != b["test_ids_hash"]:
            continue
        t = mcnemar(decode_bits(a["test_correct_bits"]), decode_bits(b["test_correct_bits"]))
        out.append(f"| {seed} | {scheme} | {t.b10} | {t.b01} | {t.p_value:.3g} |")
        pairs.append((a, b, t.p_value))
    if pairs:
        n = len(pairs)
        test = sum(b["test_accuracy"] > a["test_accuracy"] for a, b, _ in pairs)
        val = sum(b["val_accuracy"] > a["val_accuracy"] for a, b, _ in pairs)
        out += ["", f"Polish beats reapply in {test} of {n} (seed, scheme) pairs on test accuracy and {val} of {n} on "
                f"validation accuracy; {sum(p < 0.05 for _, _, p in pairs)} of {n} pairs differ significantly "
                f"(McNemar p < 0.05)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
