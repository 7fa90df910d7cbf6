"""Render ``search_bench.py``'s JSON into markdown and PNG plots (no store needed: the JSON carries the points)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

STRATEGIES = ("progressive", "random", "evolution", "tpe", "rl")


def _runs(res: dict[str, Any], key: str, prefix: str) -> list[dict[str, Any]]:
    return [r for n, r in sorted(res.get(key, {}).items()) if n.startswith(prefix + "-") and r.get("curve")]


def _curves(res: dict[str, Any]) -> None:
    """The anytime hypervolume and best validation accuracy at PR >= gamma of every run, from its evaluations
    (search fidelity, in evaluation order)."""
    from automc.catalog import scheme_key
    from automc.search._base import Observation
    from automc.search.indicators import anytime_best_at_target, anytime_hypervolume

    gamma = float(res["args"]["target_pr"])
    for key in ("strategies", "reuse"):
        for r in res.get(key, {}).values():
            pts = [p for p in r.get("evaluated", []) if p["fidelity"] == "search"]
            obs = [Observation(scheme_key(p["scheme"]), p["state"], p["val_accuracy"], p["pr"]) for p in pts]
            r["curve"] = anytime_hypervolume(obs, gamma) if obs else []
            r["best"] = anytime_best_at_target(obs, gamma) if obs else []


def _final_best(run: dict[str, Any], target_pr: float) -> dict[str, Any] | None:
    """The best test accuracy at PR >= gamma among a run's final fine-tunes."""
    rows = [p for p in run.get("evaluated", []) if p["fidelity"] == "final" and p["state"] == "COMPLETE"
            and (p["pr"] or 0) >= target_pr]
    return max(rows, key=lambda p: p["accuracy"], default=None)


def _wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def _at(curve: list[float], share: float) -> float:
    if not curve:
        return 0.0
    return curve[max(0, min(len(curve), math.ceil(share * len(curve))) - 1)]


def _overhead(run: dict[str, Any]) -> float | None:
    return run.get("overhead")


def render(out: Path, results: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import kendalltau, wilcoxon

    res: dict[str, Any] = {}
    for f in sorted(Path(out).glob("search_bench_*.json")):  # one file per phase group
        for k, v in json.loads(f.read_text()).items():
            if isinstance(v, dict) and isinstance(res.get(k), dict):
                res[k] = {**res[k], **v}
            else:
                res.setdefault(k, v)
    args = res["args"]
    gamma = float(args["target_pr"])
    _curves(res)
    n_test = int(args.get("n_test", 1017))
    results.mkdir(parents=True, exist_ok=True)
    lines = ["# Search strategies, knowledge reuse and validation honesty (`bench/search_bench.py`)", ""]
    m = res["machine"]
    lines += [f"Machine: {m.get('gpu', 'CPU only')}; {m.get('cpu', '')} ({m.get('cpus')} cores); torch "
              f"{m.get('torch')}. Task: {args['model']} on `{Path(args['data']).name}`, fine-tune on its train part, "
              f"select on `{Path(args['val_data']).name}` (JPEG, never seen by the base model), report on the "
              f"{n_test} exact test images. gamma = {gamma}, budget {args['budget']} evaluated steps, search "
              f"fidelity {args['epochs']} epochs, final fine-tune {args['final_epochs']} epochs (top "
              f"{args['top_k']}), seeds {args['seeds']}.", ""]
    summary: dict[str, Any] = {}
    # -- strategies ------------------------------------------------------------------------------------------
    indicators = (("curve", f"hypervolume (val acc x PR above {gamma})", "hypervolume", "{:.4f}"),
                  ("best", f"best val acc at PR >= {gamma}", "hypervolume_best", "{:.3f}"))
    finals: dict[str, dict[str, list[float]]] = {key: {} for key, *_ in indicators}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for (key, label, _, _), ax in zip(indicators, axes, strict=True):
        for strat in STRATEGIES:
            runs = _runs(res, "strategies", strat)
            if not runs:
                continue
            n = min(len(r[key]) for r in runs)
            curves = np.array([r[key][:n] for r in runs])
            x = np.arange(1, n + 1)
            ax.plot(x, curves.mean(0), label=strat)
            ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15)
            finals[key][strat] = [r[key][-1] for r in runs]
        ax.set_xlabel("evaluated steps")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_title("Anytime hypervolume, mean and min-max over seeds")
    axes[1].set_title("Anytime best validation accuracy at the target")
    fig.tight_layout()
    fig.savefig(results / "search_bench_hypervolume.png", dpi=120)
    plt.close(fig)
    rows = []
    for strat in STRATEGIES:
        runs = _runs(res, "strategies", strat)
        if not runs:
            continue
        bests = [_final_best(r, gamma) for r in runs]
        best = max((b for b in bests if b), key=lambda b: b["accuracy"], default=None)
        walls = [r.get("wall", 0) for r in runs]
        over = [_overhead(r) for r in runs if _overhead(r) is not None]
        lo, hi = _wilson(best["accuracy"], n_test) if best else (None, None)
        rows.append((strat, finals["curve"][strat], finals["best"][strat], best, lo, hi, float(np.mean(walls)),
                     float(np.mean(over)) if over else None, [b["accuracy"] if b else None for b in bests]))
    lines += ["## Strategies, same evaluator and budget", "",
              "| strategy | final hypervolume per seed (mean) | best val acc at PR >= gamma per seed (mean) | "
              "best test acc at PR >= gamma after final fine-tune [95% CI] | per seed | wall s per run | "
              "outside fine-tuning |",
              "|---|---|---|---|---|---|---|"]
    for strat, hv, bv, best, lo, hi, wall, over, per_seed in rows:
        acc = f"{best['accuracy']:.2%} [{lo:.1%}, {hi:.1%}] (PR {best['pr']:.1%})" if best else "none"
        seeds = ", ".join(f"{a:.2%}" if a is not None else "-" for a in per_seed)
        lines.append(f"| {strat} | {', '.join(f'{h:.4f}' for h in hv)} ({np.mean(hv):.4f}) | "
                     f"{', '.join(f'{h:.3f}' for h in bv)} ({np.mean(bv):.3f}) | {acc} | {seeds} | "
                     f"{wall:.0f} | {f'{over:.0%}' if over is not None else '-'} |")
    summary["strategies"] = {s: {"final_hv": hv, "final_best_val": bv, "best_test": b and b["accuracy"],
                                 "per_seed_best": ps} for s, hv, bv, b, _, _, _, _, ps in rows}
    for key, label, _, fmt in indicators:
        final = finals[key]
        if "progressive" not in final:
            continue
        lines += ["", f"Paired comparison of the final {label} (progressive minus other, same seed):", ""]
        for strat, values in final.items():
            if strat == "progressive" or len(values) != len(final["progressive"]):
                continue
            d = np.array(final["progressive"]) - np.array(values)
            wins = int((d > 0).sum())
            p = wilcoxon(d).pvalue if len(d) >= 3 and np.any(d != 0) else float("nan")
            per_seed = ", ".join(("+" if x >= 0 else "") + fmt.format(x) for x in d)
            lines.append(f"- vs {strat}: mean difference {'+' if d.mean() >= 0 else ''}{fmt.format(d.mean())} "
                         f"(per seed {per_seed}); progressive higher in {wins}/{len(d)} seeds; Wilcoxon p = {p:.2f} "
                         f"(3 seeds cannot reach p < 0.05)")
    lines += ["", "![anytime hypervolume and best accuracy at the target](search_bench_hypervolume.png)", ""]
    # fronts overlay
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for strat in STRATEGIES:
        pts = [(p["pr"], p["val_accuracy"]) for r in _runs(res, "strategies", strat) for p in r["evaluated"]
               if p["fidelity"] == "search" and p["state"] == "COMPLETE"]
        if pts:
            a = np.array(pts)
            ax.scatter(a[:, 0], a[:, 1], s=8, alpha=0.5, label=strat)
    ax.axvline(gamma, color="k", ls="--", lw=0.8)
    ax.set_xlabel("PR")
    ax.set_ylabel("validation accuracy (JPEG split)")
    ax.legend()
    ax.set_title("Every search-fidelity evaluation, all seeds")
    fig.tight_layout()
    fig.savefig(results / "search_bench_points.png", dpi=120)
    plt.close(fig)
    lines += ["![evaluations](search_bench_points.png)", ""]
    # -- hand-made -------------------------------------------------------------------------------------------
    hm = res.get("handmade")
    if hm:
        base = hm.get("base", {"test": float("nan")})
        ep = res.get("handmade_epochs", {})
        lines += ["## Against hand-made schemes and the Torch-Pruning peer (Table 2 shape)", "",
                  f"Each method alone in one step to PR {gamma}, fine-tuned for {ep.get('epochs', '?')} epochs — the "
                  f"epochs of the best found scheme's final fine-tune (`{ep.get('scheme', '?')}`, epoch factors "
                  f"summing to {ep.get('epochs_factor_sum', '?')}). Base model: {base['test']:.2%} test.", "",
                  "| scheme | PR | test acc [95% CI] | AR |", "|---|---|---|---|"]
        prog = [b for s, _, _, b, *_ in rows if s == "progressive"]
        if prog and prog[0]:
            b = prog[0]
            lo, hi = _wilson(b["accuracy"], n_test)
            lines.append(f"| **AutoMC progressive** `{b['scheme']}` | {b['pr']:.1%} | {b['accuracy']:.2%} "
                         f"[{lo:.1%}, {hi:.1%}] | {(b['accuracy'] - base['test']) / base['test']:+.2%} |")
        for name, r in hm.items():
            if name == "base":
                continue
            if "error" in r:
                lines.append(f"| {name} | - | failed: {r['error'][:80]} | - |")
                continue
            lines.append(f"| {name} | {r['pr']:.1%} | {r['test']:.2%} [{r['test_low']:.1%}, {r['test_high']:.1%}] | "
                         f"{(r['test'] - base['test']) / base['test']:+.2%} |")
        lines += ["", "Reference (paper, ResNet-56/CIFAR-10, full data, 3 GPU-days of search): AutoMC PR 39% with "
                  "92.61% (base 91.04%).", ""]
    # -- reuse -----------------------------------------------------------------------------------------------
    if res.get("reuse"):
        lines += ["## Knowledge reuse", "", f"`{args['reuse_model']}` searched after the runs above are in the store, "
                  "with reuse (F_mo warm-started on their evaluations, transfer of their fronts) and with "
                  "`--no-reuse`, same budget; each indicator at 25 / 50 / 100% of the budget.", ""]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        seeds = args["seeds"].strip("[]").split(", ")
        summary["reuse"] = {}
        for (key, label, _, fmt), ax in zip(indicators, axes, strict=True):
            lines += [f"{label}:", "", "| seed | reuse 25% | 50% | 100% | no-reuse 25% | 50% | 100% | reuse reaches "
                      "no-reuse final at |", "|---|---|---|---|---|---|---|---|"]
            reached = []
            for seed in seeds:
                a = res["reuse"].get(f"reuse-{seed}", {}).get(key)
                b = res["reuse"].get(f"noreuse-{seed}", {}).get(key)
                if not a or not b:
                    continue
                target = b[-1]
                hit = next((i + 1 for i, v in enumerate(a) if v >= target and target > 0), None)
                reached.append(hit / len(a) if hit else None)
                f = fmt.format
                lines.append(f"| {seed} | {f(_at(a, .25))} | {f(_at(a, .5))} | {f(a[-1])} | {f(_at(b, .25))} | "
                             f"{f(_at(b, .5))} | {f(b[-1])} | {f'{hit}/{len(a)} steps' if hit else 'never'} |")
                ax.plot(range(1, len(a) + 1), a, color="tab:blue", alpha=0.7,
                        label="reuse" if seed == seeds[0] else None)
                ax.plot(range(1, len(b) + 1), b, color="tab:orange", alpha=0.7,
                        label="no reuse" if seed == seeds[0] else None)
            ok = [r for r in reached if r is not None and r <= 0.5]
            lines += ["", f"Claim tested: with reuse the search reaches the no-reuse final {label} within half the "
                      f"budget — held in {len(ok)} of {len(reached)} seeds.", ""]
            ax.set_xlabel("evaluated steps")
            ax.set_ylabel(label)
            ax.legend()
            summary["reuse"][key] = {"reached_half": len(ok), "seeds": len(reached)}
        lines += ["![reuse](search_bench_reuse.png)", ""]
        fig.tight_layout()
        fig.savefig(results / "search_bench_reuse.png", dpi=120)
        plt.close(fig)
    # -- honesty ---------------------------------------------------------------------------------------------
    pts = [p for key in ("strategies", "reuse") for r in res.get(key, {}).values() for p in r.get("evaluated", [])
           if p["state"] == "COMPLETE" and p["val_accuracy"] is not None and p["accuracy"] is not None]
    hon = res.get("honesty", {}).get("rows", [])
    if pts or hon:
        lines += ["## Validation honesty (Kendall tau against test accuracy)", ""]
        if pts:
            t = kendalltau([p["val_accuracy"] for p in pts], [p["accuracy"] for p in pts])
            lines.append(f"- every evaluation of the benchmark ({len(pts)}): JPEG validation vs test, tau = "
                         f"{t.statistic:.3f}")
            summary["tau_all"] = t.statistic
        if hon:
            t1 = kendalltau([r["val"] for r in hon], [r["test"] for r in hon])
            t2 = kendalltau([r["carved"] for r in hon], [r["test"] for r in hon])
            lines.append(f"- {len(hon)} models measured three ways: JPEG validation (never seen) tau = "
                         f"{t1.statistic:.3f}; split carved from the training part (seen in pre-training) tau = "
                         f"{t2.statistic:.3f}")
            summary["tau_jpeg"], summary["tau_carved"] = t1.statistic, t2.statistic
        lines.append("")
    ph = res.get("phase_seconds", {})
    if ph:
        lines += ["Wall time per phase: " + ", ".join(f"{k} {v:.0f} s" for k, v in ph.items()), ""]
    (results / "search_bench.md").write_text("\n".join(lines))
    (results / "search_bench.json").write_text(json.dumps({"summary": summary, **res}, indent=1, default=str))
    return summary


if __name__ == "__main__":
    import sys

    render(Path(sys.argv[1]), Path(sys.argv[2]))
