"""Scale-out: the independent steps of one search round evaluated by 1 worker (this process, ``SerialExecutor``)
and by N Ray workers (``RayExecutor``), on the CPU or sharing one GPU; evaluations per hour and wall time per
round, as ratios to 1 worker in the same run, with the machine's load (and on a GPU its utilisation).

The round: ``--steps`` one-step schemes from the base model (what a first round evaluates), one catalogue strategy
each, the methods taken in turn and the grid values drawn with ``--seed``. Every configuration evaluates the same
steps with a fresh model cache, after its workers were started and loaded the task (a run pays that once: reported
apart as ``start_s``).

Usage (the CPU run committed under bench/results/; a 2-core machine: 1 worker with 2 threads against 2 workers
with 1 thread each):

    python bench/scaleout_bench.py --model resnet20 --weights ../shared/models/resnet20-cifar10.th \\
        --data ../shared/datasets/cifar10-subset.npz --epochs 0.1 --steps 8 --workers 1 2 --out bench/results

On a GPU (several workers sharing it; ``nvidia-smi`` sampled every 500 ms during each round):

    python bench/scaleout_bench.py ... --device cuda --epochs 1 --steps 16 --workers 1 4 --gpus-per-worker 0.25
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automc.compress.base import Task, TrainBudget
from automc.compress.data import load_data
from automc.compress.metrics import count_params
from automc.compress.models import build_model, load_weights
from automc.search.evaluator import Evaluator
from automc.search.executors import RayExecutor, SerialExecutor
from automc.search.space import SearchSpace
from automc.search.step import EvalResult


def round_schemes(space: SearchSpace, n: int, seed: int) -> list[tuple[str, ...]]:
    """``n`` allowed one-step schemes: the methods in turn, a seeded random grid strategy of each."""
    rng = np.random.default_rng(seed)
    by_method: dict[str, list[str]] = {}
    for s in space.strategies:
        if not space.why_not((s.id,)):
            by_method.setdefault(s.method, []).append(s.id)
    methods = sorted(by_method)
    return [(by_method[m][int(rng.integers(len(by_method[m])))],) for m in (methods[i % len(methods)]
                                                                           for i in range(n))]


def run_round(ev: Evaluator, schemes: list[tuple[str, ...]], ex: SerialExecutor | RayExecutor) -> list[EvalResult]:
    """The round's independent steps through ``ex``, at most ``ex.workers`` in flight, each absorbed into the
    evaluator's cache as it arrives (the search's round without the store); results in the order of ``schemes``."""
    results: list[EvalResult | None] = [None] * len(schemes)
    slots: dict[tuple[str, ...], list[int]] = {}
    pending, running = list(enumerate(schemes)), 0
    while pending or running:
        while pending and running < ex.workers:
            i, scheme = pending.pop(0)
            job = ev.prepare(scheme)
            if isinstance(job, EvalResult):  # refused before it ran
                results[i] = job
                continue
            slots.setdefault(job.scheme, []).append(i)
            ex.submit(job)
            running += 1
        if running:
            outcome = ex.wait()
            running -= 1
            results[slots[outcome.result.scheme].pop(0)] = ev.absorb(outcome)
    return [r for r in results if r is not None]


@contextlib.contextmanager
def gpu_sampler(enabled: bool) -> Iterator[dict[str, Any]]:
    """``nvidia-smi`` utilisation and memory every 500 ms while the block runs; the summary lands in the dict."""
    out: dict[str, Any] = {}
    exe = shutil.which("nvidia-smi") if enabled else None
    if not exe:
        yield out
        return
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                 "-lms", "500"], stdout=log, stderr=subprocess.DEVNULL, text=True)
        try:
            yield out
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            log.seek(0)
            rows = [[float(v) for v in ln.split(",")[:2]] for ln in log.read().splitlines()
                    if ln.count(",") >= 1 and ln.split(",")[0].strip().replace(".", "").isdigit()]
    if rows:
        util, mem = np.array(rows).T
        out.update(gpu_util_mean=float(util.mean()), gpu_util_median=float(np.median(util)),
                   gpu_util_max=float(util.max()), gpu_mem_max_mib=float(mem.max()), gpu_samples=len(rows))


def run_config(workers: int, args: argparse.Namespace, base: torch.nn.Module, task: Task, space: SearchSpace,
               schemes: list[tuple[str, ...]], cache: Path) -> tuple[dict[str, Any], list[EvalResult]]:
    """One configuration: start its executor, warm it up, time one round."""
    ev = Evaluator(base, task, cache_dir=cache / f"w{workers}", space=space, seed=args.seed)
    ev.base()
    t0 = time.perf_counter()
    if workers == 1:
        threads = args.serial_threads or (os.cpu_count() if task.device.type == "cpu" else torch.get_num_threads())
        ex: SerialExecutor | RayExecutor = SerialExecutor(ev.context(portable=False), threads=threads)
        desc = f"1 worker (this process, {threads} torch threads)"
    else:
        threads = max(1, int(args.cpus_per_worker))
        ex = RayExecutor(ev.context(), workers=workers, cpus_per_worker=args.cpus_per_worker,
                         gpus_per_worker=args.gpus_per_worker if task.device.type == "cuda" else 0.0,
                         address=args.ray_address, threads=threads)
        ex.warm_up()
        gpu = f", {args.gpus_per_worker:g} GPU" if task.device.type == "cuda" else ""
        desc = f"{workers} Ray workers ({args.cpus_per_worker:g} CPU{gpu}, {threads} torch thread(s) each)"
    start_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    try:
        with gpu_sampler(task.device.type == "cuda") as gpu:
            t = time.perf_counter()
            results = run_round(ev, schemes, ex)
            wall = time.perf_counter() - t
    finally:
        ex.close()
    row = {"workers": workers, "config": desc, "threads_per_worker": threads, "start_s": start_s,
           "round_wall_s": wall, "evaluations": len(results), "evaluations_per_hour": len(results) / wall * 3600,
           "fails": sum(not r.ok for r in results), "step_seconds_sum": sum(r.seconds for r in results),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(), **gpu}
    print(f"{desc}: round {wall:.1f} s, {row['evaluations_per_hour']:.0f} evaluations/h "
          f"(start {start_s:.1f} s, load {load_before[0]:.1f} -> {row['loadavg_after'][0]:.1f})", flush=True)
    return row, results


def same_answers(a: list[EvalResult], b: list[EvalResult]) -> bool:
    drop = {"seconds": 0.0, "train_seconds": 0.0, "device": ""}
    return all(dataclasses.replace(x, **drop) == dataclasses.replace(y, **drop) for x, y in zip(a, b, strict=True))


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    hw = f"{m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
    lines = [
        "# Scale-out: one round of independent steps, 1 worker against N Ray workers (`bench/scaleout_bench.py`)",
        "",
        f"Machine: {hw}; torch {m['torch']}, ray {result['ray']}. Device: {result['device']}.",
        f"Model {result['model']} ({result['base_params']:,} parameters) on `{result['data']}`, target PR "
        f"{result['target_pr']}, {result['epochs']} fine-tune epochs (times each strategy's epochs factors), "
        f"{len(result['schemes'])} one-step schemes from the base model (methods in turn, seed {result['seed']}).",
        f"Load average (1 min) before the run {result['loadavg_start'][0]:.2f}, after {result['loadavg_end'][0]:.2f}"
        f" (5 min: {result['loadavg_start'][1]:.2f} -> {result['loadavg_end'][1]:.2f}).",
        "",
        "| configuration | round wall (s) | evaluations / hour | ratio to 1 worker | FAIL | start (s) | load 1 min "
        "before -> after |" + (" GPU util mean / max (%) |" if result["device"] == "cuda" else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if result["device"] == "cuda" else ""),
    ]
    for r in result["configs"]:
        gpu = (f" {r.get('gpu_util_mean', float('nan')):.0f} / {r.get('gpu_util_max', float('nan')):.0f} |"
               if result["device"] == "cuda" else "")
        lines.append(f"| {r['config']} | {r['round_wall_s']:.1f} | {r['evaluations_per_hour']:.0f} | "
                     f"{r['ratio_to_1_worker']:.2f}x | {r['fails']} | {r['start_s']:.1f} | "
                     f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f} |{gpu}")
    recs = result["results"]
    keys = ("state", "params", "flops", "val_accuracy", "accuracy")
    same = [all(all(r[i][k] == recs[0][i][k] for k in keys) for r in recs) for i in range(len(result["schemes"]))]
    lines += ["", f"Identical measurements (params, FLOPs, validation and test accuracy) in every configuration: "
              f"{sum(same)} of {len(same)} steps"
              + ("" if all(same) else " (torch with another thread count rounds differently; the search compares "
                 "runs with the same threads per worker)") + ".",
              "", "| step | " + " | ".join(f"seconds, {r['workers']} worker(s)" for r in result["configs"])
              + " | " + " | ".join(f"val acc., {r['workers']} worker(s)" for r in result["configs"]) + " |",
              "|---|" + "---|" * (2 * len(recs))]
    for i, s in enumerate(result["schemes"]):
        secs = " | ".join(f"{r[i]['seconds']:.1f}" for r in recs)
        accs = " | ".join("FAIL" if r[i]["val_accuracy"] is None else f"{r[i]['val_accuracy']:.2%}" for r in recs)
        lines.append(f"| `{s[0].split('(')[0]}` ({s[0].split('(', 1)[1][:-1]}) | {secs} | {accs} |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--target-pr", type=float, default=0.4)
    ap.add_argument("--steps", type=int, default=8, help="independent one-step schemes in the round")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="configurations to compare (1 = serial)")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--serial-threads", type=int, default=0, help="torch threads of 1 worker (default: all cores)")
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="a line added to the markdown (e.g. what else ran on the machine)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--name", default="scaleout")
    ap.add_argument("--render", type=Path, default=None, help="only render this results JSON again as markdown")
    args = ap.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        result["note"] = args.note or result.get("note", "")
        args.render.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        args.render.with_suffix(".md").write_text(render(result))
        return
    import ray

    from bench._common import machine

    load_start = os.getloadavg()
    device = torch.device(args.device)
    data = load_data(args.data, device=device)
    base = load_weights(build_model(args.model, data.num_classes), args.weights).to(device).eval()
    task = Task(data, args.target_pr, TrainBudget(epochs=args.epochs, batch_size=args.batch_size), device, seed=0)
    space = SearchSpace()
    schemes = round_schemes(space, args.steps, args.seed)
    result: dict[str, Any] = {"machine": machine(), "ray": ray.__version__, "device": device.type,
                              "model": args.model, "data": args.data.name, "base_params": count_params(base),
                              "target_pr": args.target_pr, "epochs": args.epochs, "seed": args.seed,
                              "schemes": schemes, "loadavg_start": load_start, "configs": [], "note": args.note}
    answers = []
    with tempfile.TemporaryDirectory(prefix="automc-scaleout-") as tmp:
        for w in args.workers:
            row, results = run_config(w, args, base, task, space, schemes, Path(tmp))
            result["configs"].append(row)
            answers.append(results)
    ref = next((r for r in result["configs"] if r["workers"] == 1), result["configs"][0])
    for r in result["configs"]:
        r["ratio_to_1_worker"] = r["evaluations_per_hour"] / ref["evaluations_per_hour"]
    result["same_answers"] = all(same_answers(answers[0], a) for a in answers[1:])
    result["results"] = [[r.record() for r in a] for a in answers]
    result["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / f"{args.name}.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
