"""``automc search``, ``automc runs`` and ``automc report``: thin wrappers over ``automc.search``.

Importing this module stays free of torch (the search itself imports it when a search starts).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from automc.cli._util import console, err_console, handle_errors, print_json, print_rows, store_option

STRATEGY_HELP = "progressive (default), or a baseline: random, evolution (NSGA-II), tpe, rl"
OPTION_HELP = ("KEY=VALUE: an option of the strategy, repeatable; '--strategy-option help' lists each strategy's "
               "options (with --strategy, that one's)")


def _print_front(front: Sequence[Mapping[str, Any]], title: str) -> None:
    from automc.search.report import TABLE_HEADER, table_rows

    print_rows(TABLE_HEADER, table_rows(front), title=title)


class _Live:
    """Rich progress on stderr: round, compute spent/budget (epoch-equivalents) and steps, best validation accuracy
    at PR >= gamma, how many schemes reach it, ETA."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]round {task.fields[round]}"), BarColumn(),
                                 TextColumn("{task.fields[spent]}  best val@γ {task.fields[best]}  "
                                            "reaching γ {task.fields[front]}  ETA {task.fields[eta]}"),
                                 TimeElapsedColumn(),
                                 console=err_console, transient=False)
        self.task: Any = None

    def __enter__(self) -> _Live:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Any) -> None:
        best = "—" if event.best_val is None else f"{event.best_val:.2%}"
        eta = "—" if event.eta is None else _duration(event.eta)
        steps = event.unit == "steps"
        used = event.done if steps else event.spent
        spent = (f"{event.done}/{event.budget:g} steps" if steps else
                 f"{event.spent:.2f}/{event.budget:g} epoch-eq ({event.done} steps)")
        fields = {"round": max(event.round, 0), "best": best, "front": event.front_size, "eta": eta, "spent": spent}
        if self.task is None:
            self.task = self.progress.add_task("search", total=event.budget, completed=used, **fields)
        self.progress.update(self.task, completed=used, total=event.budget, **fields)
        if event.kind in ("start", "final") or (event.kind == "done" and event.message):
            self.progress.console.print(event.message, highlight=False, markup=False)
        elif event.kind == "step" and event.message.startswith("FAIL"):
            self.progress.console.print(event.message[:200], style="yellow", highlight=False, markup=False)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@handle_errors
def search_cmd(
    model: str | None = typer.Option(None, "--model", help="resnet20/32/44/56/110/164, vgg11/13/16/19, ..."),
    data: str | None = typer.Option(None, "--data", help=".npz, CIFAR batches, train/+test/ folders, or 'digits'"),
    target_pr: float | None = typer.Option(None, "--target-pr", help="parameter-reduction target gamma [0.4]"),
    target_fr: float | None = typer.Option(None, "--target-fr", help="FLOPs-reduction target, a second constraint: "
                                           "each proposal's pruned shapes are built (rung 0) before it is trained, "
                                           "and one that misses it is dropped [none]"),
    budget: float | None = typer.Option(None, "--budget", help="search compute in epoch-equivalents of the "
                                        "training split (images through forward + backward; a forward-only image "
                                        "counts 1/3), more than 0 [14]; a run from before counts steps"),
    screen: int | None = typer.Option(None, "--screen", help="screen N x the proposals of a round without "
                                      "fine-tuning (BatchNorm re-estimated) and evaluate the best 1/N at the search "
                                      "fidelity [1: off]"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="also stop after this many evaluated steps, 1 to "
                                         "100000 [no cap]"),
    weights: Path | None = typer.Option(None, "--weights", help="pretrained state dict; without it a base model "
                                        "is trained first (--train-epochs)"),
    epochs: float | None = typer.Option(None, "--epochs", help="search fidelity: base fine-tune epochs [1]"),
    final_epochs: float | None = typer.Option(None, "--final-epochs",
                                              help="total final fine-tune of each top front scheme, the same "
                                              "for every scheme; 0 skips it [10]"),
    final_mode: str | None = typer.Option(None, "--final-mode", help="polish: the searched model, polished "
                                          "(distilling from the base) for all of --final-epochs; reapply: the "
                                          "scheme again from the base model with its shares of it, then the "
                                          "polish [polish]"),
    data_fraction: float | None = typer.Option(None, "--data-fraction",
                                               help="search fidelity: share of the training data [1]"),
    val_data: Path | None = typer.Option(None, "--val-data", help="a separate validation set (selection only)"),
    val_from: str | None = typer.Option(None, "--val-from", help="test (default) or train: where the validation "
                                        "split comes from when the data has none"),
    seed: int | None = typer.Option(None, "--seed", help="0 to 4294967295 [0]"),
    strategy: str | None = typer.Option(None, "--strategy", help=STRATEGY_HELP),
    strategy_option: list[str] | None = typer.Option(None, "--strategy-option", metavar="KEY=VALUE",
                                                     help=OPTION_HELP),
    time_limit: str | None = typer.Option(None, "--time-limit", help="stop after this long, e.g. 90m or 2h"),
    store: str | None = store_option(),
    out: Path | None = typer.Option(None, "--out", help="report.md, pareto.png, search.json and the best model"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    resume: str | None = typer.Option(None, "--resume", help="continue the search run with this id"),
    reuse: bool | None = typer.Option(None, "--reuse/--no-reuse",
                                      help="learn from other tasks' evaluations (default on)"),
    per_round: int | None = typer.Option(None, "--per-round", help="schemes proposed per round [10]"),
    top_k: int | None = typer.Option(None, "--top-k", help="front schemes fine-tuned again at the end [3]"),
    max_length: int | None = typer.Option(None, "--max-length", help="most strategies in a scheme, at most 50 [5]"),
    train_epochs: float | None = typer.Option(None, "--train-epochs",
                                              help="epochs to train the base model when no --weights [10]"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="[128]"),
    lr: float | None = typer.Option(None, "--lr", help="fine-tune learning rate [0.01]"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="models of evaluated schemes and a trained "
                                          "base [~/.cache/automc/runs/RUN_ID]"),
    width: int | None = typer.Option(None, "--width", hidden=True, help="first-stage width of a built-in model"),
    workers: int | None = typer.Option(None, "--workers", help="evaluations run side by side as Ray tasks [1: no "
                                       "Ray]"),
    gpus_per_worker: float | None = typer.Option(None, "--gpus-per-worker", help="share of a GPU per worker "
                                                 "(0.25: four per GPU) [1/workers on a GPU]"),
    ray_address: str | None = typer.Option(None, "--ray-address", help="join this Ray cluster (HOST:PORT) "
                                           "instead of starting a local one"),
    baseline: str | None = typer.Option(None, "--baseline", metavar="SCHEME",
                                        help="a scheme (as 'automc compress --scheme' takes it) given the same final "
                                        "fine-tune and compared with the found model; kb: the knowledge base's "
                                        "choice (default); none: skip it"),
) -> None:
    """Search for Pareto-optimal compression schemes (accuracy vs parameter reduction)."""
    from automc.search.config import SearchConfig, parse_duration
    from automc.search.study import SearchInterrupted, search

    if strategy_option and "help" in strategy_option:
        _print_options(strategy)
        return
    if val_from == "train" and val_data is None and not json_out:  # with --val-data, the search refuses it
        err_console.print("warning: a validation split from the training data is biased for a model trained on "
                          "those images", style="yellow", highlight=False, soft_wrap=True)
    cfg = SearchConfig(model=model, data=data, target_pr=target_pr, target_fr=target_fr, budget=budget,
                       max_steps=max_steps, screen=screen, weights=_s(weights), epochs=epochs,
                       final_epochs=final_epochs, final_mode=final_mode, data_fraction=data_fraction,
                       val_data=_s(val_data), val_from=val_from, seed=seed, strategy=strategy,
                       time_limit=parse_duration(time_limit), store=store, out=_s(out), per_round=per_round,
                       max_length=max_length, reuse=reuse, top_k=top_k, device=device, batch_size=batch_size, lr=lr,
                       train_epochs=train_epochs, resume=resume, cache_dir=_s(cache_dir), width=width,
                       workers=workers, gpus_per_worker=gpus_per_worker, ray_address=ray_address,
                       strategy_options=_assignments(strategy_option) if strategy_option else None,
                       baseline=baseline)
    try:
        if json_out:
            result = search(cfg)
        else:
            with _Live() as live:
                result = search(cfg, progress=live)
    except SearchInterrupted as e:
        # plain writes: Rich would wrap the command at the terminal's width, and a pasted first line fails
        sys.stderr.write(f"interrupted: search run {e.run_id} is saved; resume with:\n{e.command}\n")
        sys.stderr.flush()
        raise typer.Exit(130) from None
    if json_out:
        print_json(result.to_dict())
        return
    if result.best:
        _print_front(result.best, f"Best schemes of run {result.run_id} (reaching the targets; validation accuracy "
                                  f"ranks them; test accuracy of final models only)")
        _print_front(result.front, f"Pareto front of run {result.run_id} (validation accuracy vs PR, PR ≥ γ)")
    else:
        console.print(f"no evaluated scheme reached the targets in run {result.run_id}")
    spent = (f"{result.evaluations}/{result.budget:g} steps" if result.budget_unit == "steps" else
             f"{result.compute:.3g}/{result.budget:g} epoch-equivalents of search compute")
    console.print(f"{spent}: {result.evaluations} steps evaluated ({result.failed} failed) in "
                  f"{_duration(result.seconds)}; "
                  f"setup {_duration(result.setup_seconds)}, then {result.overhead:.0%} of the search outside "
                  f"method training; reused "
                  f"{result.reuse.get('evaluations', 0)} evaluations of {result.reuse.get('tasks', 0)} other tasks",
                  highlight=False)
    _print_baseline(result.baseline)
    if result.out:
        console.print(f"report: {result.out}", highlight=False)


def _print_baseline(baseline: Mapping[str, Any] | None) -> None:
    """The found model against the baseline, one line (``report.baseline_summary``)."""
    if baseline and baseline.get("summary"):
        console.print(f"baseline: {baseline['summary']}", highlight=False, markup=False, soft_wrap=True)


def _assignments(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` texts as a mapping (values are typed by the strategy's declaration, never evaluated)."""
    from automc.errors import ValidationError

    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValidationError(f"expected KEY=VALUE, got {item!r} ('--strategy-option help' lists the keys)",
                                  field="--strategy-option")
        if key in out and out[key] != value:
            raise ValidationError(f"{key} is given twice ({out[key]!r} and {value!r})", field="--strategy-option")
        out[key] = value
    return out


def _print_options(strategy: str | None) -> None:
    """Each strategy's options (or only ``strategy``'s): key, type, range, default and meaning."""
    from automc.errors import ValidationError
    from automc.search import STRATEGIES

    if strategy is not None and strategy not in STRATEGIES:
        raise ValidationError(f"unknown strategy {strategy!r}; known: {', '.join(sorted(STRATEGIES))}",
                              field="--strategy")
    for name in [strategy] if strategy else list(STRATEGIES):
        options = STRATEGIES[name].OPTIONS
        console.print(f"{name}:" + ("" if options else " no options"), highlight=False, markup=False)
        width = max(map(len, options), default=0)
        for key, option in options.items():
            console.print(f"  {key:<{width}}  {option.describe()}", highlight=False, markup=False, soft_wrap=True)


def _s(p: Path | str | None) -> str | None:
    return None if p is None else str(p)


@handle_errors
def runs_cmd(store: str | None = store_option(),
             limit: int = typer.Option(100, "--limit"),
             json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List search runs, newest first."""
    from automc.kb import open_store

    with open_store(store, read_only=True) as s:
        rows = s.list_runs(limit)
    if json_out:
        print_json(rows)
        return
    print_rows(("id", "strategy", "options", "task", "state", "steps", "best val@γ", "started"),
               [(r["id"], r["strategy"] or "", " ".join(f"{k}={v}" for k, v in r["options"].items()), r["task"] or "",
                 r["state"] or "", f"{r['evaluations']}/{r['budget']}" if r["budget"] else str(r["evaluations"]),
                 "—" if r["best"] is None else f"{r['best']:.2%}", r["started"] or "") for r in rows],
               title=f"{len(rows)} search run(s)")


@handle_errors
def report_cmd(run_ids: list[str] = typer.Argument(..., metavar="RUN_ID...", help="search run id(s)"),
               out: Path | None = typer.Option(None, "--out", help="write report.md, pareto.png, search.json"),
               store: str | None = store_option(),
               json_out: bool = typer.Option(False, "--json", help="print search.json")) -> None:
    """Rebuild search runs' reports from the store alone; several runs are also compared (compare.md, overlaid
    fronts and hypervolume curves in --out)."""
    from automc._fs import check_writable_dir
    from automc.kb import open_store
    from automc.search.report import budget_line, build_report, to_json, write_comparison, write_report

    if out is not None:
        check_writable_dir(out, "--out")
    with open_store(store, read_only=True) as s:
        infos = [build_report(s, run_id) for run_id in run_ids]
    if out is not None and len(infos) > 1:
        write_comparison(infos, out)
    for info in infos:
        target = None
        if out is not None:
            target = out if len(infos) == 1 else out / info.run.id
            write_report(info, target)
        if json_out:
            continue
        _print_front(info.front, f"Pareto front of run {info.run.id} ({info.run.algorithm}, {info.run.state}, "
                                 f"γ = {info.gamma})")
        console.print(f"{budget_line(info)}; {info.seconds:,.0f} s (setup "
                      f"{info.setup_seconds:,.0f} s), then {info.overhead:.0%} of the search outside method training",
                      highlight=False)
        _print_baseline(info.baseline)
        if target is not None:
            console.print(f"report: {target}", highlight=False)
    if json_out:
        print_json(to_json(infos[0]) if len(infos) == 1 else [to_json(i) for i in infos])
