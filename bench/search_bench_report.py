"""Render ``search_bench.py``'s JSON into markdown, a JSON copy and two PNG plots (no store needed: the JSON carries
every run's points, found model and per-image test correctness). Nothing here is chosen by test accuracy: each run's
model is the one the tool reported (best validation accuracy)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

PR_TOLERANCE = 0.005  # a method lands within a few tenths of a point of its ratio; below this it missed γ
BASELINE_STRATEGIES = ("random", "evolution", "tpe", "rl")  # what progressive must beat (issue 16's target)


def _groups(runs: dict[str, Any], kind: str) -> dict[str, list[dict[str, Any]]]:
    """Finished runs of ``kind`` by group (plan order kept), each group's runs by seed."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs.values():
        if r.get("kind") == kind:
            out.setdefault(r["group"], []).append(r)
    return {g: sorted(rs, key=lambda r: r["seed"]) for g, rs in out.items()}


def _acc(run: dict[str, Any], gamma: float) -> float | None:
    """Final test accuracy of a run's model when it reaches γ (None: failed, no final model, or PR below γ)."""
    f = run.get("found") or {}
    if "error" in run or f.get("test_accuracy") is None or (f.get("pr") or 0.0) < gamma - PR_TOLERANCE:
        return None
    return float(f["test_accuracy"])


def mean_sd(values: list[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (0 for one value) and count of the values that exist."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _ms(values: list[float | None], pct: bool = True) -> str:
    m = mean_sd(values)
    if m is None:
        return "–"
    if pct:
        return f"{m[0]:.2%} ± {m[1] * 100:.2f} (n={m[2]})"
    return f"{m[0]:.2f} ± {m[1]:.2f} (n={m[2]})"


def anytime(run: dict[str, Any], gamma: float, target_fr: float | None = None) -> list[tuple[float, float | None]]:
    """(compute spent so far, best validation accuracy at PR >= γ so far) after every evaluated search step."""
    spent, best, out = 0.0, None, []
    for p in sorted(run.get("points") or [], key=lambda p: (p.get("step") is None, p.get("step") or 0)):
        spent += float(p.get("compute") or 0.0)
        ok = p.get("state") == "COMPLETE" and (p.get("pr") or 0.0) >= gamma - 1e-9 and \
            (target_fr is None or (p.get("fr") or 0.0) >= target_fr)
        if ok and p.get("val_accuracy") is not None:
            best = max(best or 0.0, float(p["val_accuracy"]))
        out.append((spent, best))
    return out


def _at(curve: list[tuple[float, float | None]], compute: float) -> float | None:
    """The best validation accuracy once ``compute`` was spent (the last point at or below it)."""
    got = [b for c, b in curve if c <= compute + 1e-9]
    return got[-1] if got else None


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Exact McNemar of two models' per-image test correctness (None when either lacks it or the images differ)."""
    from automc.compress.paired import decode_bits, mcnemar

    if not a.get("test_correct_bits") or not b.get("test_correct_bits") or a.get("test_ids_hash") != b.get(
            "test_ids_hash"):
        return None
    ca, cb = decode_bits(a["test_correct_bits"]), decode_bits(b["test_correct_bits"])
    m = mcnemar(ca, cb)
    return {"diff": float(ca.mean() - cb.mean()), "only_a": m.b10, "only_b": m.b01, "p_value": m.p_value, "n": m.n}


def _cell(t: dict[str, Any] | None) -> str:
    if t is None:
        return "–"
    return f"{t['diff'] * 100:+.2f} pp (p={t['p_value']:.2g})"


def _provenance_line(runs: dict[str, Any], machine: dict[str, Any]) -> str:
    """Which automc commit and which CPU each group ran on: runs made in several sessions may differ in both, and
    another CPU's kernels change the floating-point path (a run without a ``cpu`` field ran on the file's machine)."""
    by: dict[tuple[str, str], dict[str, set[int]]] = {}
    for r in runs.values():
        if r.get("kind") != "base":
            key = (r.get("code") or "not recorded", r.get("cpu") or str(machine.get("cpu")))
            by.setdefault(key, {}).setdefault(r.get("group", "?"), set()).add(int(r.get("seed", 0)))
    return "- Code (automc commit) and CPU per run (group seeds): " + "; ".join(
        f"`{c}` on {cpu}: " + ", ".join(f"{g} {','.join(map(str, sorted(ss)))}" for g, ss in sorted(gs.items()))
        for (c, cpu), gs in sorted(by.items())) + "."


def load(out: Path) -> dict[str, Any]:
    return json.loads((Path(out) / "search_bench.json").read_text())


def render(out: Path, results: Path, name: str = "search_bench16") -> dict[str, Any]:
    """Write ``<results>/<name>.md``, ``.json`` (the raw results), ``_anytime.png`` and ``_final.png``; returns
    the summary (also under ``summary`` in the JSON copy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = load(out)
    proto, runs, mach = res["protocol"], res.get("runs", {}), res.get("machine", {})
    gamma = float(proto["target_pr"])
    searches, singles = _groups(runs, "search"), _groups(runs, "single")
    base = runs.get("base") if "error" not in runs.get("base", {"error": ""}) else None
    results.mkdir(parents=True, exist_ok=True)
    # what ran, from the runs themselves (the stored protocol keeps the lists of the last invocation only)
    seeds = sorted({r["seed"] for r in runs.values() if r.get("kind") != "base"})
    ablation = [g for g in searches if g.startswith("progressive-")]
    total = float(proto["budget"]) + float(proto["final_epochs"])
    smoke = ", smoke mode" if proto.get("smoke") else ""
    width = f" (width {proto['width']})" if proto.get("width") else ""
    lines = [f"# Search vs compressing by hand at the same total compute (`bench/search_bench.py`{smoke})", "",
             "## Protocol (fixed before running)", "",
             f"- Model `{proto['model']}`{width}, weights "
             f"`{Path(str(proto['weights'])).name}`, data `{Path(str(proto['data'])).name}` (selection on its "
             f"validation part, test accuracy of final models only), γ = {gamma} (PR ≥ γ - {PR_TOLERANCE} counts).",
             f"- Search runs: {', '.join(g for g in searches if not g.startswith('progressive-'))}"
             f"{' and the F_mo ablation ' + ', '.join(ablation) if ablation else ''}; search budget "
             f"{proto['budget']:g} epoch-equivalents of compute, fidelity "
             f"{proto['epochs'] if proto['epochs'] is not None else 'the tool default'} epochs, final fine-tune "
             f"{proto['final_epochs']:g} epochs of the top {proto['top_k']} (distillation from the base), baseline "
             f"`{proto['baseline']}`, reuse {'on (progressive, amc, seernet)' if proto['reuse'] else 'off'}. "
             "The model compared is the one the "
             f"tool reports (best validation accuracy), never chosen by test accuracy.",
             f"- Single methods: {', '.join(g.removeprefix('single-') for g in singles)}, each alone at "
             f"`target_ratio_factor=1.0` with the catalogue's middle settings (TP-L2: Torch-Pruning L2 + KD), "
             f"fine-tuned {total:g} epochs (the search's "
             f"budget + final fine-tune), distilling from the base.",
             f"- Seeds {', '.join(map(str, seeds))} (each table names a run's seed); device {proto['device']}, "
             f"{proto['threads']} torch threads per run.",
             f"- Machine: {mach.get('gpu') or 'CPU only'}; {mach.get('cpu')} ({mach.get('cores')} cores); torch "
             f"{mach.get('torch')}, Python {mach.get('python')}.", _provenance_line(runs, mach), ""]
    if base:
        lines += [f"Base model: {base['test_accuracy']:.2%} test accuracy on {base['test_images']} images, "
                  f"{base['params']:,} parameters.", ""]
    failed = [r for r in runs.values() if "error" in r]
    # -- per seed --------------------------------------------------------------------------------------------------
    lines += ["## Final test accuracy at PR ≥ γ, per seed", "",
              "| run | seed | scheme | test acc | val acc | PR | FR | search compute | total compute | wall s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    summary: dict[str, Any] = {}
    for kind, groups in (("search", searches), ("single", singles)):
        for g, rs in groups.items():
            for r in rs:
                f = r.get("found") or {}
                if "error" in r:
                    lines.append(f"| {g} | {r['seed']} | failed: {r['error'][:100]} | | | | | | | "
                                 f"{r.get('wall', 0):.0f} |")
                    continue
                acc = _acc(r, gamma)
                search_c = r.get("compute") if kind == "search" else None
                final_c = r.get("final_compute")
                total_c = r.get("compute") if kind == "single" else \
                    (search_c or 0.0) + (final_c if final_c is not None else float(proto["final_epochs"]))
                acc_s = f"{acc:.2%}" if acc is not None else (
                    f"{f['test_accuracy']:.2%} (PR below γ)" if f.get("test_accuracy") is not None else "no model")
                lines.append(f"| {g} | {r['seed']} | `{f.get('scheme', '')}` | {acc_s} | "
                             f"{_pct(f.get('val_accuracy'))} | {_pct(f.get('pr'))} | {_pct(f.get('fr'))} | "
                             f"{_num(search_c)} | {_num(total_c)} | {r.get('wall', 0):.0f} |")
    lines += ["", "Compute in epoch-equivalents of the training split (`compress.compute`: teacher forwards and "
              "measuring included). A search run's total is its search compute plus its final model's (as the store "
              "recorded it, else the nominal final epochs; the baseline's fine-tune is not counted); a single "
              "method's is metered around it (its final measurement on validation and test included).", "",
              "## Mean ± sd over seeds", "",
              "| run | test acc at PR ≥ γ | PR | FR | compute (search; single method: total) | wall s |",
              "|---|---|---|---|---|---|"]
    for kind, groups in (("search", searches), ("single", singles)):
        for g, rs in groups.items():
            accs = [_acc(r, gamma) for r in rs]
            ok = [r for r in rs if "error" not in r]
            prs = [(r.get("found") or {}).get("pr") for r in ok]
            frs = [(r.get("found") or {}).get("fr") for r in ok]
            comp = [r.get("compute") for r in ok]
            walls = [r.get("wall") for r in ok]
            lines.append(f"| {g} | {_ms(accs)} | {_ms(prs)} | {_ms(frs)} | {_ms(comp, False)} | "
                         f"{_ms(walls, False)} |")
            m = mean_sd(accs)
            summary[g] = {"kind": kind, "per_seed": {str(r["seed"]): _acc(r, gamma) for r in rs},
                          "mean": m[0] if m else None, "sd": m[1] if m else None, "n": m[2] if m else 0}
    # -- anytime -----------------------------------------------------------------------------------------------------
    budget = float(proto["budget"])
    lines += ["", "## Anytime best validation accuracy at PR ≥ γ vs search compute (mean over seeds)", "",
              "| search | 25% of budget | 50% | 100% | end of run |", "|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for g, rs in searches.items():
        curves = [anytime(r, gamma) for r in rs if "error" not in r]
        if not curves:
            continue
        cells = []
        for share in (0.25, 0.5, 1.0):
            cells.append(_ms([_at(c, share * budget) for c in curves]))
        cells.append(_ms([c[-1][1] if c else None for c in curves]))
        lines.append(f"| {g} | {' | '.join(cells)} |")
        for i, c in enumerate(curves):
            pts = [(x, y) for x, y in c if y is not None]
            if pts:
                ax.step(*zip(*pts, strict=True), where="post", color=f"C{list(searches).index(g)}",
                        label=g if i == 0 else None, alpha=0.8)
    ax.set_xlabel("search compute (epoch-equivalents)")
    ax.set_ylabel(f"best validation accuracy at PR ≥ {gamma}")
    ax.set_title("Anytime best validation accuracy (one line per seed)")
    if searches:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results / f"{name}_anytime.png", dpi=110)
    plt.close(fig)
    lines += ["", f"![anytime curves]({name}_anytime.png)", ""]
    # -- final accuracies per seed plot ------------------------------------------------------------------------------
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(summary) + 2), 4.2))
    for i, s in enumerate(summary.values()):
        ys = [v for v in s["per_seed"].values() if v is not None]
        ax.scatter([i] * len(ys), ys, color="C0" if s["kind"] == "search" else "C1", zorder=3)
        if s["mean"] is not None:
            ax.hlines(s["mean"], i - 0.3, i + 0.3, color="k")
    if base:
        ax.axhline(base["test_accuracy"], ls="--", color="grey", label="base model")
    ax.set_xticks(range(len(summary)), list(summary), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"final test accuracy at PR ≥ {gamma}")
    ax.scatter([], [], color="C0", label="search run")
    ax.scatter([], [], color="C1", label="single method")
    ax.legend(fontsize=8)
    ax.set_title("Final test accuracy per seed (bar: mean)")
    fig.tight_layout()
    fig.savefig(results / f"{name}_final.png", dpi=110)
    plt.close(fig)
    lines += [f"![final accuracies per seed]({name}_final.png)", ""]
    # -- paired tests ------------------------------------------------------------------------------------------------
    lines += ["## Exact McNemar tests, per seed (same test images)", "",
              "Each cell: the search run's model minus the other model's test accuracy, and the two-sided exact "
              "McNemar p-value over the images one gets right and the other wrong.", ""]
    tests: dict[str, Any] = {}
    others = [g for g in singles] + (["progressive"] if "progressive" in searches else [])
    for seed in seeds:
        by = {r["group"]: r for r in runs.values() if r.get("seed") == seed and "error" not in r
              and r.get("kind") != "base"}
        rows = [g for g in searches if g in by]
        if not rows or not others:
            continue
        lines += [f"Seed {seed}:", "", f"| search \\ vs | {' | '.join(others)} |",
                  f"|---|{'---|' * len(others)}"]
        for g in rows:
            cells = []
            for o in others:
                t = None if o == g or o not in by else paired(by[g].get("found") or {}, by[o].get("found") or {})
                tests[f"{g}-{seed} vs {o}-{seed}"] = t
                cells.append("·" if o == g else _cell(t))
            lines.append(f"| {g} | {' | '.join(cells)} |")
        lines.append("")
    # -- baseline lines ----------------------------------------------------------------------------------------------
    lines += ["## Each search run's baseline line (`--baseline`)", ""]
    for g, rs in searches.items():
        for r in rs:
            if "error" not in r:
                lines.append(f"- {g} seed {r['seed']}: {(r.get('baseline') or {}).get('summary') or 'no baseline'}")
    # -- F_mo ----------------------------------------------------------------------------------------------------------
    lines += ["", "## F_mo's per-round rank correlation (progressive runs' stored strategy state)", "",
              "Spearman correlation of the predicted vs observed accuracy change on each round's new steps, before "
              "F_mo is fitted on them, beside the prior's; `ranking` is what ranked the round's proposals.", "",
              "| run | seed | round | steps | F_mo | prior | ranking |", "|---|---|---|---|---|---|---|"]
    any_q = False
    for g, rs in searches.items():
        for r in rs:
            for q in r.get("quality") or []:
                any_q = True
                lines.append(f"| {g} | {r['seed']} | {q.get('round')} | {q.get('steps')} | {_num(q.get('fmo'))} | "
                             f"{_num(q.get('prior'))} | {q.get('ranking')} |")
    if not any_q:
        lines.append("| (no round was measured) | | | | | | |")
    rungs = rung_correlations(singles)
    fidelity = proto["epochs"] if proto["epochs"] is not None else "the tool default"
    lines += ["", "## Rungs vs the final fine-tune (single-method schemes)", "",
              "Each single method's scheme as the search's rungs see it, outside its run's compute: rung 0 "
              "(`--screen`: pruned with no fine-tuning, BatchNorm re-estimated, validation accuracy) and rung 1 "
              f"(the search fidelity, {fidelity} epochs × the "
              "scheme's factors), against the same scheme after its whole fine-tune. Per seed, the rank correlation "
              "over the methods (Spearman ρ, Kendall τ) with the final validation accuracy (what the search may "
              "use) and the final test accuracy; this run's searches screened: "
              f"{proto.get('screen') or 'off'}.", "",
              "| rung | seed | methods | ρ vs final val | τ vs final val | ρ vs final test | τ vs final test |",
              "|---|---|---|---|---|---|---|"]
    for rung in ("screen", "search"):
        for seed, c in sorted(rungs["per_seed"].get(rung, {}).items()):
            lines.append(f"| {rung} | {seed} | {c['n']} | {_num(c['rho_val'])} | {_num(c['tau_val'])} | "
                         f"{_num(c['rho_test'])} | {_num(c['tau_test'])} |")
        m = rungs["mean"].get(rung)
        if m:
            lines.append(f"| {rung} | mean ± sd | | {_ms(m['rho_val'], False)} | {_ms(m['tau_val'], False)} | "
                         f"{_ms(m['rho_test'], False)} | {_ms(m['tau_test'], False)} |")
    if not rungs["per_seed"]:
        lines.append("| (fewer than 3 single methods with rungs in any seed) | | | | | | |")
    lines += ["", "Per method, mean over seeds:", "", "| method | rung 0 val | rung 1 val | final val | final test |",
              "|---|---|---|---|---|"]
    for g, v in rungs["methods"].items():
        lines.append(f"| {g} | {_ms(v['screen'])} | {_ms(v['search'])} | {_ms(v['final_val'])} | "
                     f"{_ms(v['final_test'])} |")
    lines.append("")
    # -- per-layer vs uniform -----------------------------------------------------------------------------------------
    uniforms = _groups(runs, "uniform")
    if uniforms:
        lines += ["## Per-layer policy vs one ratio for every layer (same PR, same criterion, same final fine-tune)",
                  "", "Each per-layer search's reported policy and the uniform policy of (at least) its PR, both "
                  "applied from the base model with the final fine-tune; exact McNemar on the same test images.", "",
                  "| strategy | seed | learned test | uniform test | learned PR | uniform PR | learned − uniform |",
                  "|---|---|---|---|---|---|---|"]
        for g, rs in uniforms.items():
            for r in rs:
                a, b = r.get("learned") or {}, r.get("uniform") or {}
                lines.append(f"| {g.removeprefix('uniform-')} | {r['seed']} | {_pct(a.get('test_accuracy'))} | "
                             f"{_pct(b.get('test_accuracy'))} | {_num(a.get('pr'))} | {_num(b.get('pr'))} | "
                             f"{_cell(paired(a, b))} |")
            lines.append(f"| {g.removeprefix('uniform-')} | mean | "
                         f"{_ms([(r.get('learned') or {}).get('test_accuracy') for r in rs])} | "
                         f"{_ms([(r.get('uniform') or {}).get('test_accuracy') for r in rs])} | | | |")
        lines.append("")
    # -- targets -------------------------------------------------------------------------------------------------------
    targets = _targets(summary, proto, base) + _perlayer_targets(summary, uniforms)
    lines += ["## Targets", ""] + [f"- {t['text']}" for t in targets]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r['name']}: {r['error'][:300]}" for r in failed]
    lines.append("")
    (results / f"{name}.md").write_text("\n".join(lines))
    copy = dict(res, summary=summary, paired=tests, targets=targets, rungs=rungs)
    (results / f"{name}.json").write_text(json.dumps(copy, indent=1, default=str))
    return copy


def rung_correlations(singles: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per rung and seed, Spearman ρ and Kendall τ over the single methods between the rung's validation accuracy
    and the final validation / test accuracy (scipy); their mean ± sd over seeds; each method's values."""
    from scipy.stats import kendalltau, spearmanr

    per_seed: dict[str, dict[int, dict[str, Any]]] = {}
    methods: dict[str, dict[str, list[float | None]]] = {}
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for g, rs in singles.items():
        for r in rs:
            f = r.get("found") or {}
            if "error" in r or not r.get("rungs") or f.get("val_accuracy") is None:
                continue
            by_seed.setdefault(r["seed"], []).append(r)
            m = methods.setdefault(g, {"screen": [], "search": [], "final_val": [], "final_test": []})
            for rung in ("screen", "search"):
                m[rung].append((r["rungs"].get(rung) or {}).get("val_accuracy"))
            m["final_val"].append(f.get("val_accuracy"))
            m["final_test"].append(f.get("test_accuracy"))
    for seed, rs in by_seed.items():
        for rung in ("screen", "search"):
            pts = [((r["rungs"].get(rung) or {}).get("val_accuracy"), r["found"]["val_accuracy"],
                    r["found"].get("test_accuracy")) for r in rs]
            pts = [p for p in pts if p[0] is not None and p[2] is not None]
            if len(pts) < 3:
                continue
            x, v, t = (list(c) for c in zip(*pts, strict=True))

            def stat(fn: Any, a: list[float], b: list[float]) -> float | None:
                value = float(fn(a, b)[0])
                return None if math.isnan(value) else value

            per_seed.setdefault(rung, {})[seed] = {
                "n": len(pts), "rho_val": stat(spearmanr, x, v), "tau_val": stat(kendalltau, x, v),
                "rho_test": stat(spearmanr, x, t), "tau_test": stat(kendalltau, x, t)}
    mean = {rung: {k: [c[k] for c in cs.values()] for k in ("rho_val", "tau_val", "rho_test", "tau_test")}
            for rung, cs in per_seed.items()}
    return {"per_seed": per_seed, "mean": mean, "methods": methods}


def _targets(summary: dict[str, Any], proto: dict[str, Any], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 16's targets, each met, missed or not measurable, with the numbers."""
    out: list[dict[str, Any]] = []
    prog = summary.get("progressive")
    singles = {g: s for g, s in summary.items() if s["kind"] == "single" and s["mean"] is not None}
    if not prog or prog["mean"] is None:
        return [{"target": "all", "met": None,
                 "text": "no progressive run produced a final model at PR ≥ γ: no target can be checked"}]
    pm = prog["mean"]
    best_g = None
    if singles:
        # each comparison on the seeds both sides finished, so a seed still running cannot tilt it
        paired_means = {g: _common(prog, s) for g, s in singles.items()}
        paired_means = {g: m for g, m in paired_means.items() if m}
        best_g = max(paired_means, key=lambda g: paired_means[g][1]) if paired_means else None
    if singles and best_g:
        best = singles[best_g]
        p_mean, b_mean, seeds = paired_means[best_g]
        below = [f"seed {s}: {prog['per_seed'][s]:.2%} vs {best['per_seed'][s]:.2%}" for s in seeds
                 if prog["per_seed"][s] < best["per_seed"][s] - 0.01]
        met = p_mean >= b_mean and not below
        seeds_text = (f"seeds more than 1 pp below it: {', '.join(below)}" if below
                      else "no seed more than 1 pp below it")
        out.append({"target": "best single method", "met": met,
                    "text": f"{'MET' if met else 'MISSED'}: progressive {p_mean:.2%} mean vs the best single method "
                            f"({best_g}) {b_mean:.2%} at equal total compute, over seeds {_seeds(seeds)}"
                            f"; {seeds_text}"})
    else:
        out.append({"target": "best single method", "met": None,
                    "text": "no single method finished on a seed progressive finished: not measured"})
    if str(proto.get("target_acc", "0.905")) == "base":
        if base:
            met = pm >= base["test_accuracy"]
            out.append({"target": "base accuracy", "met": met,
                        "text": f"{'MET' if met else 'MISSED'}: progressive {pm:.2%} mean vs the base model's "
                                f"{base['test_accuracy']:.2%} (no accuracy loss)"})
        else:
            out.append({"target": "base accuracy", "met": None, "text": "the base run is missing: not measured"})
    else:
        goal = float(proto["target_acc"])
        out.append({"target": "absolute accuracy", "met": pm >= goal,
                    "text": f"{'MET' if pm >= goal else 'MISSED'}: progressive {pm:.2%} mean vs the target "
                            f"{goal:.2%}"})
    rivals = {g: _common(prog, s) for g, s in summary.items() if s["kind"] == "search"
              and g in BASELINE_STRATEGIES and s["mean"] is not None}
    rivals = {g: m for g, m in rivals.items() if m}
    if rivals:
        worse = [g for g, (p_mean, r_mean, _) in rivals.items() if r_mean > p_mean]
        out.append({"target": "every baseline strategy", "met": not worse,
                    "text": f"{'MET' if not worse else 'MISSED'}: "
                            + ", ".join(f"progressive {p_mean:.2%} vs {g} {r_mean:.2%} (seeds {_seeds(seeds)})"
                                        for g, (p_mean, r_mean, seeds) in rivals.items())})
    return out


def _perlayer_targets(summary: dict[str, Any], uniforms: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 17's targets: a learned per-layer policy beats uniform at the same PR and final fine-tune (higher mean,
    lower on no seed, and significantly higher on at least one: exact McNemar p < 0.05), and the best of amc,
    seernet and progressive beats every single method at equal total compute (mean over the shared seeds)."""
    out: list[dict[str, Any]] = []
    for g, rs in uniforms.items():
        pairs = [(r["seed"], r.get("learned") or {}, r.get("uniform") or {}) for r in rs if "error" not in r]
        pairs = [(sd, a, b) for sd, a, b in pairs
                 if a.get("test_accuracy") is not None and b.get("test_accuracy") is not None]
        if not pairs:
            continue
        tests = [paired(a, b) for _, a, b in pairs]
        la = sum(a["test_accuracy"] for _, a, _ in pairs) / len(pairs)
        ua = sum(b["test_accuracy"] for _, _, b in pairs) / len(pairs)
        lower = [sd for sd, a, b in pairs if a["test_accuracy"] < b["test_accuracy"]]
        won = [t for t in tests if t and t["diff"] > 0 and t["p_value"] < 0.05]
        met = la > ua and not lower and bool(won)
        ps = ", ".join(f"{t['p_value']:.2g}" if t else "–" for t in tests)
        out.append({"target": f"{g} beats uniform", "met": met,
                    "text": f"{'MET' if met else 'MISSED'}: {g.removeprefix('uniform-')}'s policy {la:.2%} vs "
                            f"uniform at its PR {ua:.2%} (mean of {len(pairs)} seeds; lower on seeds "
                            f"{_seeds(lower) if lower else 'none'}; per-seed p {ps})"})
    searches = {g: summary[g] for g in ("amc", "seernet", "progressive") if summary.get(g, {}).get("mean") is not None}
    singles = {g: s for g, s in summary.items() if s["kind"] == "single" and s["mean"] is not None}
    if uniforms and searches and singles:
        best = max(searches, key=lambda g: searches[g]["mean"])
        common = {g: _common(searches[best], s) for g, s in singles.items()}
        common = {g: m for g, m in common.items() if m}
        beaten = [g for g, (m, sm, _) in common.items() if sm > m]
        out.append({"target": "per-layer or progressive beats every single method", "met": not beaten,
                    "text": f"{'MET' if not beaten else 'MISSED'}: the best of {', '.join(searches)} by mean is "
                            f"{best} ({searches[best]['mean']:.2%}); single methods above it on the shared seeds: "
                            + (", ".join(f"{g} {common[g][1]:.2%}" for g in beaten) if beaten else "none")})
    return out


def _common(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, list[str]] | None:
    """The means of two groups over the seeds both finished, and those seeds; None when they share none."""
    seeds = sorted(s for s, v in a["per_seed"].items() if v is not None and b["per_seed"].get(s) is not None)
    if not seeds:
        return None
    return (sum(a["per_seed"][s] for s in seeds) / len(seeds), sum(b["per_seed"][s] for s in seeds) / len(seeds),
            seeds)


def _seeds(seeds: list[str]) -> str:
    """Seeds as a comma-separated list."""
    return ", ".join(str(s) for s in seeds)


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2%}"


def _num(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
