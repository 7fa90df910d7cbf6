"""A search run's report, rebuilt from the store alone: a data step (``build_report`` -> ``ReportInfo``) and render
steps (markdown, ``pareto.png``, ``search.json``); the CLI renders the same rows as a Rich table.

The objective comes first: the schemes that meet the targets (PR >= gamma, FR >= the FLOPs target when set), best
validation accuracy first (``search.objective``). The Pareto front is the second view, recomputed from the run's
search-fidelity evaluations (non-dominated on validation accuracy and PR, PR >= gamma). A scheme that was fine-tuned
again at full fidelity shows that final evaluation. Test accuracy is measured for final models (and the base) only:
a search-fidelity row shows None / "—". Beside the found model, the report shows the baseline (the same final
fine-tune of one reference scheme, ``search.final.baseline``) and the exact McNemar test of the two on the same test
images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from automc.kb.records import RunRecord
from automc.kb.states import ENDED, EVALUATED, State
from automc.kb.store import Store
from automc.search._base import observation, search_rows


class ReportInfo(NamedTuple):
    """Everything a report shows: the run, the base model, every evaluated point, the front and the timing."""

    run: RunRecord
    gamma: float
    base: dict[str, Any]
    points: list[dict[str, Any]]  # every COMPLETE search-fidelity evaluation
    front: list[dict[str, Any]]  # front rows (``front_rows``), by PR
    evaluations: int  # evaluated steps (COMPLETE + FAILED; an INTERRUPTED one is evaluated again)
    failed: int
    seconds: float
    train_seconds: float
    setup_seconds: float  # data, base model, embeddings: before the first proposal
    curve: list[float] = []  # hypervolume of (validation accuracy, PR) above (0, gamma) after each evaluated step
    best_curve: list[float] = []  # best validation accuracy at PR >= gamma after each evaluated step
    ranked: list[dict[str, Any]] = []  # the schemes meeting the targets, best validation accuracy first
    baseline: dict[str, Any] | None = None  # the reference scheme vs the found model (``baseline_summary``)
    compute: float = 0.0  # search compute of the evaluated steps, in epoch-equivalents (``compress.compute``)

    @property
    def hypervolume(self) -> float:
        return self.curve[-1] if self.curve else 0.0

    @property
    def overhead(self) -> float:
        """Share of the search's wall time after setup spent outside method training."""
        search = self.seconds - self.setup_seconds
        return max(0.0, 1.0 - self.train_seconds / search) if search > 0 else 0.0


def build_report(store: Store, run_id: str) -> ReportInfo:
    """Read the run, its evaluations and their per-image test records; raises ``NotFoundError`` for an unknown
    run."""
    return report_info(store.load_run(run_id), store.run_evaluations(run_id),
                       store.named("test-records", {"run": run_id}))


def report_info(run: RunRecord, rows: Sequence[Mapping[str, Any]],
                tests: Sequence[Mapping[str, Any]] = ()) -> ReportInfo:
    """The data step: front, points and timing from a run and its evaluation rows; ``tests`` (the ``test-records``
    rows) give the paired test of the found model against the baseline."""
    steps = search_rows(rows)
    points = [dict(r) for r in steps if r["state"] == State.COMPLETE]
    train = sum(float(r.get("train_seconds") or 0.0) for r in rows if r.get("state") in ENDED)
    target_fr = run.config.get("config", {}).get("target_fr")
    front = front_rows(points, rows, run.target_pr)
    ranked = ranked_rows(points, rows, run.target_pr, target_fr)
    return ReportInfo(run, run.target_pr, dict(run.config.get("base") or {}), points, front, len(steps),
                      sum(r["state"] == State.FAILED for r in steps), run.seconds, train,
                      float(run.config.get("setup_seconds") or 0.0), anytime_curve(steps, run.target_pr),
                      anytime_best(steps, run.target_pr), ranked,
                      baseline_summary(run, rows, tests, _best(ranked or front)),
                      sum(float(r.get("compute") or 0.0) for r in steps))


BASELINE_ALPHA = 0.05  # the paired test's level for "better" / "worse"


def baseline_summary(run: RunRecord, rows: Sequence[Mapping[str, Any]], tests: Sequence[Mapping[str, Any]],
                     found: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The reference scheme's final fine-tune beside the found model (``found``: the reported best row), with the
    exact McNemar test on their per-image test records and one ``summary`` line; None when no baseline was chosen.

    The baseline shown is the run's evaluation of the scheme it chose (``run.config["baseline"]``), a complete one
    first; the paired test needs a final found model and the same test images (``test_ids_hash``).
    """
    from automc.compress.paired import compare_evaluations

    chosen = dict(run.config.get("baseline") or {})
    evaluated = [r for r in rows if r.get("fidelity") == "baseline" and r.get("state") in EVALUATED]
    if not evaluated:
        if not chosen.get("why"):
            return None
        return {"scheme": chosen.get("scheme"), "why": chosen["why"], "summary": f"no baseline: {chosen['why']}"}
    mine = [r for r in evaluated if r["scheme"] == chosen.get("scheme")] or evaluated
    row = max(mine, key=lambda r: (r["state"] == State.COMPLETE, r.get("step") or 0))
    name = row["scheme"]
    out: dict[str, Any] = {"scheme": name, "why": chosen.get("why") or "", "evaluation_id": row["id"],
                           "state": row["state"], "error": row.get("error") or "", "params": row["params"],
                           "pr": row["pr"], "flops": row["flops"], "fr": row["fr"], "val_accuracy": row["val_accuracy"],
                           "test_accuracy": row["accuracy"], "test_low": row["accuracy_low"],
                           "test_high": row["accuracy_high"], "epochs": row.get("epochs"), "paired": None}
    records = {r["id"]: r for r in tests}
    if row["state"] != State.COMPLETE:
        out["summary"] = f"the baseline {name} failed ({out['error']}): nothing to compare"
    elif found is None or found.get("fidelity") != "final":
        out["summary"] = (f"the search has no final fine-tuned model to compare with the baseline {name} (test "
                          f"accuracy {_pct(row['accuracy'])})")
    elif found["evaluation_id"] not in records or row["id"] not in records:
        out["summary"] = (f"no per-image test record of the search's model or of the baseline {name}: no paired "
                          f"test")
    elif records[found["evaluation_id"]]["test_ids_hash"] != records[row["id"]]["test_ids_hash"]:
        out["summary"] = (f"the search's model and the baseline {name} were tested on different test images "
                          f"(test_ids_hash differs): no paired test")
    else:
        m = compare_evaluations(records[found["evaluation_id"]], records[row["id"]])
        verdict = ("not distinguishable from" if m.p_value >= BASELINE_ALPHA
                   else "better than" if m.b10 > m.b01 else "worse than")
        out["paired"] = {"found_evaluation_id": found["evaluation_id"], "baseline_evaluation_id": row["id"],
                         "only_found": m.b10, "only_baseline": m.b01, "images": m.n, "p_value": m.p_value,
                         "alpha": BASELINE_ALPHA, "verdict": verdict.removesuffix(" than").removesuffix(" from")}
        out["summary"] = (f"the search's model ({_pct(found['test_accuracy'])}) is {verdict} the baseline {name} "
                          f"({_pct(row['accuracy'])}) on the same {m.n:,} test images (exact McNemar p = "
                          f"{m.p_value:.3g}; {m.b10} images only the search's model gets right, {m.b01} only the "
                          f"baseline)")
    return out


def budget_line(info: ReportInfo) -> str:
    """What the run's budget counts, what it spent and how many steps that was (one line of the report)."""
    cfg = info.run.config.get("config", {})
    done = f"{info.evaluations} steps evaluated ({info.failed} failed)"
    if cfg.get("budget_unit", "steps") == "steps":  # a run stored before compute was counted
        return f"budget: {cfg.get('budget', info.run.budget)} steps, {done}; search compute {info.compute:.3g} " \
               f"epoch-equivalents"
    cap = f", at most {cfg['max_steps']} steps" if cfg.get("max_steps") else ""
    return (f"budget: {float(cfg.get('budget') or 0):g} epoch-equivalents of search compute{cap}; spent "
            f"{info.compute:.3g} in {done}")


def anytime_curve(steps: Sequence[Mapping[str, Any]], gamma: float) -> list[float]:
    """The hypervolume after each evaluated step, in evaluation order (``indicators.anytime_hypervolume``)."""
    from automc.search.indicators import anytime_hypervolume

    return anytime_hypervolume([observation(r) for r in steps], gamma)


def anytime_best(steps: Sequence[Mapping[str, Any]], gamma: float) -> list[float]:
    """The best validation accuracy at PR >= gamma after each evaluated step (``indicators.anytime_best_at_target``)."""
    from automc.search.indicators import anytime_best_at_target

    return anytime_best_at_target([observation(r) for r in steps], gamma)


def front_rows(points: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
               gamma: float) -> list[dict[str, Any]]:
    """The front of ``points`` at PR >= ``gamma``, each row showing its final evaluation when there is one."""
    from automc.search.pareto import front

    return _shown(front([observation(r) for r in points], gamma), points, rows)


def ranked_rows(points: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], gamma: float,
                target_fr: float | None = None) -> list[dict[str, Any]]:
    """The points meeting the targets, best (search) validation accuracy first, each row showing its final
    evaluation when there is one."""
    from automc.search.objective import ranked

    return _shown(ranked([observation(r) for r in points], gamma, target_fr), points, rows)


def _shown(observations: Sequence[Any], points: Sequence[Mapping[str, Any]],
           rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    by_id = {r["id"]: r for r in points}
    final = {r["scheme"]: r for r in rows if r.get("fidelity") == "final" and r["state"] == State.COMPLETE}
    out = []
    for o in observations:
        search = by_id[o.evaluation_id]
        shown = final.get(search["scheme"], search)
        out.append({"scheme": search["scheme"], "scheme_id": search["scheme_id"], "evaluation_id": shown["id"],
                    "fidelity": shown.get("fidelity") or "search", "params": shown["params"], "pr": shown["pr"],
                    "flops": shown["flops"], "fr": shown["fr"], "val_accuracy": shown["val_accuracy"],
                    "test_accuracy": shown["accuracy"], "test_low": shown["accuracy_low"],
                    "test_high": shown["accuracy_high"], "search_evaluation_id": search["id"],
                    "search_val_accuracy": search["val_accuracy"], "search_pr": search["pr"]})
    return out


def best_row(info: ReportInfo) -> dict[str, Any] | None:
    """The scheme to export: the best validation accuracy among the final evaluations of schemes meeting the targets,
    else the best such search point (front rows of runs stored before the objective); never the baseline."""
    return _best(info.ranked or info.front)


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    rows = [r for r in rows if r["fidelity"] == "final"] or list(rows)
    return max(rows, key=lambda r: (r["val_accuracy"] or 0.0, r["pr"] or 0.0), default=None)


def to_json(info: ReportInfo) -> dict[str, Any]:
    """``search.json``: the run, its front and every point, with the timing."""
    r = info.run
    return {"run_id": r.id, "strategy": r.algorithm, "state": r.state, "task": r.task, "target_pr": info.gamma,
            "budget": r.config.get("config", {}).get("budget", r.budget),
            "budget_unit": r.config.get("config", {}).get("budget_unit", "steps"), "compute": info.compute,
            "seed": r.seed, "started": r.started, "finished": r.finished,
            "config": r.config.get("config", {}), "reuse": r.config.get("reuse", {}), "base": info.base,
            "ranked": info.ranked, "front": info.front, "points": info.points, "evaluations": info.evaluations,
            "failed": info.failed,
            "seconds": info.seconds, "train_seconds": info.train_seconds, "setup_seconds": info.setup_seconds,
            "overhead": info.overhead, "hypervolume": info.hypervolume, "hypervolume_curve": info.curve,
            "best_at_target_curve": info.best_curve, "prediction_quality": prediction_quality(info),
            "baseline": info.baseline}


def prediction_quality(info: ReportInfo) -> list[dict[str, Any]]:
    """Per round, the strategy's measured rank correlation of predicted vs observed step AR on the round's new
    steps before its model fitted them (F_mo's and the prior's) and the ranking the round used; [] without."""
    return [dict(q) for q in info.run.strategy_state.get("quality") or []]


def _quality_lines(info: ReportInfo) -> list[str]:
    """The report's F_mo section: one line per round."""
    rows = prediction_quality(info)
    if not rows:
        return []

    def rho(x: Any) -> str:
        return "—" if x is None else f"{float(x):+.2f}"

    return ["## Predictions (F_mo)", "",
            "Spearman correlation of predicted vs observed step accuracy change on each round's new steps, measured "
            "before the model was fitted on them (— : not measurable), and what ranked that round's candidates:", "",
            *(f"- round {q.get('round')}: {q.get('steps')} steps; F_mo {rho(q.get('fmo'))}, prior "
              f"{rho(q.get('prior'))}; ranked by {q.get('ranking')}" for q in rows), ""]


def _pct(x: Any) -> str:
    return "—" if x is None else f"{float(x):.2%}"


def _interval(row: Mapping[str, Any]) -> str:
    if row.get("test_accuracy") is None:
        return "—"
    lo, hi = row.get("test_low"), row.get("test_high")
    tail = f" [{float(lo):.1%}, {float(hi):.1%}]" if lo is not None and hi is not None else ""
    return f"{float(row['test_accuracy']):.2%}{tail}"


def table_rows(front: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Front rows as text cells: scheme, params (PR), FLOPs (FR), val acc, test acc [95%], fidelity, id."""
    out = []
    for r in front:
        out.append([r["scheme"], f"{float(r['params'] or 0):,.0f} ({_pct(r['pr'])})",
                    f"{float(r['flops'] or 0) / 1e6:,.2f} M ({_pct(r['fr'])})", _pct(r["val_accuracy"]),
                    _interval(r), r["fidelity"], r["evaluation_id"]])
    return out


TABLE_HEADER = ["scheme", "params (PR)", "FLOPs (FR)", "val acc", "test acc [95%]", "fidelity", "evaluation"]


def render_markdown(info: ReportInfo) -> str:
    """``report.md``: task, configuration, the Pareto table and the timing."""
    r, cfg = info.run, info.run.config.get("config", {})
    lines = [f"# Search run {r.id}", "",
             f"- task: `{r.task}` (model {cfg.get('model')}, data {cfg.get('data')})",
             f"- strategy: {r.algorithm}, seed {r.seed}, state {r.state}",
             f"- target PR (gamma): {info.gamma}",
             f"- {budget_line(info)}",
             f"- search fidelity: {cfg.get('epochs')} epochs on {cfg.get('data_fraction')} of the training data; "
             f"final fine-tune: {cfg.get('final_epochs')} epochs of the full data for the top {cfg.get('top_k')}",
             f"- validation split from: {cfg.get('val_from')}" + (f" ({cfg['val_data']})" if cfg.get("val_data")
                                                                   else ""),
             f"- base model: {float(info.base.get('params') or 0):,.0f} parameters, validation accuracy "
             f"{_pct(info.base.get('val_accuracy'))}, test accuracy {_pct(info.base.get('accuracy'))}",
             f"- reuse: {json.dumps(r.config.get('reuse', {}))}", "",
             "## Best schemes (validation accuracy, PR >= gamma" + (
                 f", FR >= {cfg['target_fr']}" if cfg.get("target_fr") is not None else "") + ")", ""]
    _table(lines, info.ranked[:10], f"No evaluated scheme met the targets (PR >= {info.gamma}).")
    lines += ["", "## Pareto front (validation accuracy vs PR, PR >= gamma)", ""]
    _table(lines, info.front, f"No evaluated scheme reached PR >= {info.gamma}.")
    lines += baseline_markdown(info)
    per = info.seconds / info.evaluations if info.evaluations else 0.0
    lines += ["", "Selection uses validation accuracy only; test accuracy (95% Wilson interval) is measured for final "
              "models only (— for a search-fidelity row) and never used to choose.", "",
              f"Hypervolume of (validation accuracy, PR) above (0, gamma) after the {info.evaluations} steps: "
              f"{info.hypervolume:.4f}; best validation accuracy at PR >= gamma: "
              f"{info.best_curve[-1] if info.best_curve else 0.0:.2%} (their curves: `hypervolume.png`).", "",
              "## Timing", "",
              f"- wall time: {info.seconds:,.1f} s, of which setup (data, base model, embeddings) "
              f"{info.setup_seconds:,.1f} s; {per:,.1f} s per evaluated step",
              f"- inside method training: {info.train_seconds:,.1f} s; the rest of the search after setup "
              f"(strategy and F_mo, caching, measuring, store writes, final models): {info.overhead:.1%}", ""]
    return "\n".join(lines + _quality_lines(info))


def _table(lines: list[str], rows: Sequence[Mapping[str, Any]], empty: str) -> None:
    if not rows:
        lines.append(empty)
        return
    lines.append("| " + " | ".join(TABLE_HEADER) + " |")
    lines.append("|" + "---|" * len(TABLE_HEADER))
    for cells in table_rows(rows):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")


def baseline_markdown(info: ReportInfo) -> list[str]:
    """The report's "worth it" section: the found model and the baseline side by side, and the paired test."""
    b = info.baseline
    if not b:
        return []
    lines = ["", "## Was the search worth it? (the same final fine-tune of a reference scheme)", "",
             f"Baseline `{b['scheme']}`: {b['why']}.", ""]
    if b.get("evaluation_id"):
        found = _best(info.front)
        header = ["model", *TABLE_HEADER]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, row in (("found by the search", found), ("baseline", {**b, "fidelity": "baseline"})):
            if row is not None:
                cells = [label, *table_rows([row])[0]]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return [*lines, f"**{b['summary']}**"]


def render_png(info: ReportInfo, path: str | Path) -> Path:
    """``pareto.png``: every evaluation, the front as a line, the base model and gamma marked."""

    def draw(ax: Any) -> None:
        pts = [p for p in info.points if p.get("pr") is not None and p.get("val_accuracy") is not None]
        ax.scatter([float(p["pr"]) for p in pts], [float(p["val_accuracy"]) for p in pts], s=14, c="0.6",
                   label=f"evaluated schemes ({len(pts)})")
        if info.front:
            fx = [float(r["search_pr"]) for r in info.front]
            fy = [float(r["search_val_accuracy"]) for r in info.front]
            ax.plot(fx, fy, "-o", c="tab:red", ms=5, label="Pareto front (search fidelity)")
            final = [r for r in info.front if r["fidelity"] == "final"]
            if final:
                ax.scatter([float(r["pr"]) for r in final], [float(r["val_accuracy"]) for r in final], marker="*",
                           s=120, c="tab:blue", label="after final fine-tune", zorder=3)
        if info.base.get("val_accuracy") is not None:
            ax.scatter([0.0], [float(info.base["val_accuracy"])], marker="D", s=50, c="k", label="base model",
                       zorder=3)
        ax.axvline(info.gamma, ls="--", c="tab:green", label=f"gamma = {info.gamma}")
        ax.set_xlabel("parameter reduction (PR)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"search run {info.run.id} ({info.run.algorithm})")
        ax.legend(fontsize=8, loc="lower left")

    return _figure(path, draw)


def _figure(path: str | Path, draw: Any, size: tuple[float, float] = (7, 4.5), panels: int = 1) -> Path:
    """Draw on fresh matplotlib axes (``draw(ax)``, or ``draw(axes)`` for several ``panels`` side by side) and save
    them as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=size, dpi=120, squeeze=False)
    draw(axes[0, 0] if panels == 1 else list(axes[0]))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def render_curves(infos: Sequence[ReportInfo], path: str | Path) -> Path:
    """``hypervolume.png``: the anytime hypervolume and best validation accuracy at PR >= gamma of one run, or of
    several overlaid (the hypervolume mostly measures PR overshoot when strategies aim at gamma itself)."""
    gamma = infos[0].gamma

    def draw(axes: list[Any]) -> None:
        for info in infos:
            axes[0].plot(range(1, len(info.curve) + 1), info.curve, label=_label(info))
            axes[1].plot(range(1, len(info.best_curve) + 1), info.best_curve, label=_label(info))
        axes[0].set_ylabel(f"hypervolume (val acc x PR above gamma = {gamma})")
        axes[1].set_ylabel(f"best validation accuracy at PR >= {gamma}")
        for ax in axes:
            ax.set_xlabel("evaluated steps")
            ax.legend(fontsize=8)

    return _figure(path, draw, (12, 4.2), panels=2)


def _label(info: ReportInfo) -> str:
    return f"{info.run.id} ({info.run.algorithm}, seed {info.run.seed})"


def render_fronts(infos: Sequence[ReportInfo], path: str | Path) -> Path:
    """``pareto.png`` of several runs: each run's front (search fidelity) in its own colour, gamma marked."""

    def draw(ax: Any) -> None:
        for info in infos:
            fx = [float(r["search_pr"]) for r in info.front]
            fy = [float(r["search_val_accuracy"]) for r in info.front]
            ax.plot(fx, fy, "-o", ms=4, label=_label(info))
        ax.axvline(infos[0].gamma, ls="--", c="tab:green", label=f"gamma = {infos[0].gamma}")
        ax.set_xlabel("parameter reduction (PR)")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=8, loc="lower left")

    return _figure(path, draw)


def write_comparison(infos: Sequence[ReportInfo], out: str | Path) -> dict[str, Path]:
    """Several runs overlaid: ``compare.md`` (a row per run), ``pareto.png`` (fronts), ``hypervolume.png``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    lines = ["# Search runs compared", "",
             "| run | strategy | seed | steps | hypervolume | best val acc at PR >= gamma | its test acc [95%] | "
             "evaluation |", "|---|---|---|---|---|---|---|---|"]
    for info in infos:
        best = best_row(info)
        cells = ([_pct(best["val_accuracy"]), _interval(best), f"`{best['evaluation_id']}`"] if best
                 else ["-", "-", "-"])
        lines.append(f"| {info.run.id} | {info.run.algorithm} | {info.run.seed} | {info.evaluations} | "
                     f"{info.hypervolume:.4f} | " + " | ".join(cells) + " |")
    paths = {"report": d / "compare.md", "plot": d / "pareto.png", "curves": d / "hypervolume.png"}
    paths["report"].write_text("\n".join(lines) + "\n")
    render_fronts(infos, paths["plot"])
    render_curves(infos, paths["curves"])
    return paths


def write_report(info: ReportInfo, out: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``pareto.png``, ``hypervolume.png`` and ``search.json`` into ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"report": d / "report.md", "plot": d / "pareto.png", "json": d / "search.json",
             "curves": d / "hypervolume.png"}
    paths["report"].write_text(render_markdown(info))
    render_png(info, paths["plot"])
    render_curves([info], paths["curves"])
    paths["json"].write_text(json.dumps(to_json(info), indent=1, sort_keys=True, default=str))
    return paths
