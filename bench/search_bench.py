"""Search strategies head to head on one evaluator, knowledge reuse, hand-made schemes and validation honesty.

Phases (each writes ``search_bench.json`` in ``--out`` as it goes, so a cut-off run still leaves its data):

- ``strategies``: progressive vs random vs evolution vs TPE vs RL, the same task and budget, ``--seeds`` each,
  every run a real ``automc.search.search`` in its own process (``--jobs`` at a time, sharing one store and,
  on a GPU, one device). Anytime hypervolume of (validation accuracy, PR) above (0, gamma) after every
  evaluation, final hypervolume, and the best test accuracy at PR >= gamma after the final fine-tune.
- ``reuse``: after the strategies' runs are in the store, ``--reuse-model`` searched with and without reuse
  (each run on its own copy of that store): hypervolume at 25/50/100% of the budget.
- ``handmade``: each method alone at PR gamma and the Torch-Pruning L2 + KD peer, fine-tuned for as many epochs
  as the best found scheme used in its final fine-tune (the paper's Table 2 shape).
- ``honesty``: random schemes evaluated once, each model measured on the validation split (JPEG images the base
  model never saw), on a split carved from the training part (the old rule), and on test: Kendall tau of each
  against test accuracy.

Usage (the GPU run committed under bench/results/; paths are arguments, nothing is copied):

    python bench/search_bench.py --shared ../shared --device cuda --jobs 8 --out bench/out/search \\
        --budget 30 --epochs 0.5 --final-epochs 5 --seeds 0 1 2
    python bench/search_bench.py --render bench/out/search --results bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

STRATEGIES = ("progressive", "random", "evolution", "tpe", "rl")


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    info["torch"] = torch.__version__
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _search(kwargs: dict[str, Any]) -> dict[str, Any]:
    """One search in a worker process; returns its JSON summary (or the error)."""
    import torch

    torch.set_num_threads(int(kwargs.pop("threads", 2)))
    from automc.search import SearchConfig, search

    t0 = time.time()
    try:
        res = search(SearchConfig(**kwargs))
        out = res.to_dict()
        out["trained_on"] = res.learnt.get("trained_on", {})
    except Exception as e:  # noqa: BLE001 - a failed run is a result to report, not a reason to stop the bench
        out = {"error": f"{type(e).__name__}: {e}"}
    out["wall"] = time.time() - t0
    return out


def _base_kwargs(args: argparse.Namespace, model: str, weights: Path) -> dict[str, Any]:
    return {"model": model, "weights": str(weights), "data": str(args.data), "val_data": str(args.val_data),
            # this (old) protocol counts steps: --max-steps, with a compute budget that never binds (issue 16
            # rewrites the bench to count compute)
            "target_pr": args.target_pr, "budget": 1e5, "max_steps": args.budget, "epochs": args.epochs,
            "final_epochs": args.final_epochs, "top_k": args.top_k, "device": args.device, "store": args.store,
            "per_round": args.per_round, "threads": args.threads, "data_fraction": args.data_fraction}


def run_strategies(args: argparse.Namespace, res: dict[str, Any], save) -> None:
    jobs = []
    for seed in args.seeds:
        for strategy in args.strategies:
            name = f"{strategy}-{seed}"
            kw = _base_kwargs(args, args.model, args.weights)
            kw.update(seed=seed, strategy=strategy, out=str(args.out / "runs" / name), store=seed_store(args, seed),
                      cache_dir=str(args.out / "cache" / name), time_limit=args.time_limit, _name=name)
            jobs.append(kw)
    _pool_named(jobs, args.jobs, res, "strategies", save, args)


def _pool_named(jobs: list[dict[str, Any]], workers: int, res: dict[str, Any], key: str, save,
                args: argparse.Namespace) -> None:
    named = []
    for j in jobs:
        j = dict(j)
        named.append((j.pop("_name"), j))
    done = res.setdefault(key, {})
    named = [(n, j) for n, j in named if "run_id" not in done.get(n, {})]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
        futs = {ex.submit(_search, j): (name, j) for name, j in named}
        for fut in as_completed(futs):
            name, job = futs[fut]
            r = done[name] = fut.result()
            if r.get("run_id"):
                r["evaluated"] = run_points(job["store"], r["run_id"])
            print(f"[{time.strftime('%H:%M:%S')}] {key} {name}: run {r.get('run_id')} "
                  f"{r.get('evaluations')} evaluations in {r.get('wall', 0):.0f} s {r.get('error', '')}", flush=True)
            save()


def run_points(store_uri: str, run_id: str) -> list[dict[str, Any]]:
    """Every evaluation of a run in order: fidelity, state, validation and test accuracy, PR, seconds."""
    from automc.kb import open_store

    with open_store(store_uri) as s:
        rows = s.run_evaluations(run_id)
    keys = ("scheme", "state", "fidelity", "val_accuracy", "accuracy", "pr", "fr", "seconds", "train_seconds",
            "round")
    return [{k: r.get(k) for k in keys} for r in rows]


def seed_store(args: argparse.Namespace, seed: int) -> str:
    """The store one seed's strategy runs share (a store per seed keeps the single-writer lock uncontended)."""
    return f"ladybug://{(args.out / f'store-{seed}' / 'kb.lbug').resolve()}"


def copy_store(src: str, dst: Path) -> str:
    """A private copy of a LadybugDB store (the file and its side files)."""
    path = Path(src.removeprefix("ladybug://"))
    dst.mkdir(parents=True, exist_ok=True)
    for f in path.parent.iterdir():
        if f.name.startswith(path.name):
            shutil.copy(f, dst / f.name)
    return f"ladybug://{dst / path.name}"


def run_reuse(args: argparse.Namespace, res: dict[str, Any], save) -> None:
    jobs = []
    for seed in args.seeds:
        for reuse in (True, False):
            name = f"{'reuse' if reuse else 'noreuse'}-{seed}"
            kw = _base_kwargs(args, args.reuse_model, args.reuse_weights)
            kw.update(max_steps=args.reuse_budget or args.budget, final_epochs=args.reuse_final_epochs)
            kw.update(seed=seed, strategy="progressive", reuse=reuse, out=str(args.out / "reuse" / name),
                      cache_dir=str(args.out / "cache" / name), time_limit=args.time_limit,
                      store=copy_store(seed_store(args, seed), args.out / "stores" / name), _name=name)
            jobs.append(kw)
    _pool_named(jobs, args.jobs, res, "reuse", save, args)


def run_handmade(args: argparse.Namespace, res: dict[str, Any], save) -> None:
    """Each method alone at PR gamma and TP-L2 + KD, with the epochs of the best found scheme's final fine-tune."""
    from automc.catalog import scheme_key
    from automc.compress import METHODS
    from automc.search.space import SearchSpace

    best = best_run(res.get("strategies", {}), "progressive")
    epochs = args.final_epochs
    if best is not None:
        space = SearchSpace()
        factor = sum(space.epochs_factor(s) for s in scheme_key(best["scheme"]))
        epochs = args.final_epochs * factor
        res["handmade_epochs"] = {"scheme": best["scheme"], "epochs_factor_sum": factor, "epochs": epochs}
    out = res.setdefault("handmade", {})
    names = [n for n in (*METHODS, "TP-L2", "base") if n not in out]
    job = {"weights": str(args.weights), "data": str(args.data), "val_data": str(args.val_data), "model": args.model,
           "device": args.device, "target_pr": args.target_pr, "epochs": epochs, "threads": args.threads}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as ex:
        futs = {ex.submit(_handmade_one, name, job): name for name in names}
        for fut in as_completed(futs):
            out[futs[fut]] = fut.result()
            print(f"[{time.strftime('%H:%M:%S')}] handmade {futs[fut]}: {out[futs[fut]]}", flush=True)
            save()


def _handmade_one(name: str, job: dict[str, Any]) -> dict[str, Any]:
    """One method alone (or the peer, or the unpruned base) in a worker process."""
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from methods import SETTINGS, tp_l2_baseline

    from automc.compress import METHODS
    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import load_data
    from automc.compress.metrics import wilson_interval
    from automc.compress.models import build_model, load_weights
    from automc.compress.scheme import measure

    torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(0)
    dev = torch.device(job["device"])
    t0 = time.time()
    try:
        data = load_data(job["data"], val_data=job["val_data"], seed=0, device=dev)
        base = build_model(job["model"], data.num_classes)
        load_weights(base, job["weights"])
        task = Task(data, job["target_pr"], TrainBudget(epochs=job["epochs"]), dev, 0)
        before = measure(base, task)
        if name == "base":
            return {"test": before.acc_test, "val": before.acc_val, "params": before.params}
        if name == "TP-L2":
            model = tp_l2_baseline(base, task, job["target_pr"], job["epochs"])
        else:
            model = METHODS[name]().compress(base, task, SETTINGS[name], job["target_pr"])
        m = measure(model, task)
        lo, hi = wilson_interval(m.test_correct, m.test_total)
        return {"pr": 1 - m.params / before.params, "test": m.acc_test, "test_low": lo, "test_high": hi,
                "val": m.acc_val, "seconds": time.time() - t0, "epochs": job["epochs"]}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def run_honesty(args: argparse.Namespace, res: dict[str, Any], save) -> None:
    """Random one-to-three-step schemes; each model on the JPEG validation split, a train-carved split and test."""
    import numpy as np
    import torch

    from automc.catalog import scheme_text
    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import load_data
    from automc.compress.models import build_model, load_weights
    from automc.compress.train import evaluate
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace

    dev = torch.device(args.device)
    data = load_data(args.data, val_data=args.val_data, seed=0, device=dev)
    carved = load_data(args.data, val_from="train", seed=0, device=dev)
    base = build_model(args.model, data.num_classes)
    load_weights(base, args.weights)
    space = SearchSpace()
    task = Task(data, args.target_pr, TrainBudget(epochs=args.epochs), dev, 0)
    ev = Evaluator(base, task, cache_dir=args.out / "honesty-cache", seed=0, space=space)
    rng = np.random.default_rng(0)
    rows = res.setdefault("honesty", {"rows": []})["rows"]
    m = ev.base()
    rows.append({"scheme": "", "val": m.val_accuracy, "test": m.test_accuracy,
                 "carved": evaluate(base.to(dev), carved, "val", device=dev).top1})
    while len(rows) < args.honesty + 1:
        scheme = space.random_scheme(rng, int(rng.integers(1, 4)))
        if not scheme:
            continue
        for i in range(1, len(scheme) + 1):
            r = ev.evaluate(tuple(scheme[:i]))
            if not r.ok:
                break
            model = ev.model(tuple(scheme[:i]))
            rows.append({"scheme": scheme_text(scheme[:i]), "val": r.val_accuracy, "pr": r.pr,
                         "carved": evaluate(model.to(dev), carved, "val", device=dev).top1, "test": r.test_accuracy})
        save()


def val_subsample(path: Path, n: int, out: Path) -> Path:
    """A seeded, stratified subsample of a validation file, written under ``out`` (cheaper selection on a CPU)."""
    import numpy as np

    dst = out / f"val-subsample-{n}.npz"
    if not dst.is_file():
        with np.load(path) as z:
            x, y = z["x_val"], z["y_val"]
        rng = np.random.default_rng(0)
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n // 10, replace=False)
                                       for c in np.unique(y)]))
        np.savez(dst, x_val=x[keep], y_val=y[keep])
    return dst


def best_run(runs: dict[str, Any], strategy: str) -> dict[str, Any] | None:
    """The front row with the best test accuracy after the final fine-tune over the runs of one strategy."""
    best = None
    for name, r in runs.items():
        if not name.startswith(strategy + "-"):
            continue
        for row in r.get("front", []):
            if row.get("fidelity") == "final" and (best is None or row["test_accuracy"] > best["test_accuracy"]):
                best = row
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    p.add_argument("--model", default="resnet56")
    p.add_argument("--weights", type=Path)
    p.add_argument("--reuse-model", default="resnet20")
    p.add_argument("--reuse-weights", type=Path)
    p.add_argument("--reuse-budget", type=int, default=None, help="budget of the reuse runs [--budget]")
    p.add_argument("--reuse-final-epochs", type=float, default=0.0, help="the reuse runs compare hypervolume at "
                   "search fidelity, so no final fine-tune by default")
    p.add_argument("--data", type=Path)
    p.add_argument("--val-data", type=Path)
    p.add_argument("--target-pr", type=float, default=0.4)
    p.add_argument("--budget", type=int, default=30)
    p.add_argument("--epochs", type=float, default=0.5)
    p.add_argument("--final-epochs", type=float, default=5.0)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--phases", nargs="+", default=["strategies", "reuse", "handmade", "honesty"])
    p.add_argument("--honesty", type=int, default=24, help="evaluations in the honesty phase")
    p.add_argument("--val-subsample", type=int, default=0, help="select on a seeded stratified subsample of "
                   "--val-data of this size (0: all of it)")
    p.add_argument("--data-fraction", type=float, default=1.0, help="search fidelity: share of the training data")
    p.add_argument("--device", default="cuda")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=None, help="seconds per search run")
    p.add_argument("--store", default=None)
    p.add_argument("--out", type=Path, default=Path("bench/out/search"))
    p.add_argument("--render", type=Path, default=None, help="render a finished --out into --results and exit")
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    if args.render:
        from search_bench_report import render

        render(args.render, args.results)
        return
    s = args.shared
    args.weights = args.weights or s / "models" / f"{args.model}-cifar10.th"
    args.reuse_weights = args.reuse_weights or s / "models" / f"{args.reuse_model}-cifar10.th"
    args.data = args.data or s / "datasets" / "cifar10-subset.npz"
    args.val_data = args.val_data or s / "datasets" / "cifar10-val-jpeg.npz"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.val_subsample:
        args.val_data = val_subsample(args.val_data, args.val_subsample, args.out)
    args.store = args.store or f"ladybug://{(args.out / 'store' / 'kb.lbug').resolve()}"
    # one JSON per phase group, so groups can run side by side (the renderer merges them)
    path = args.out / f"search_bench_{'_'.join(args.phases)}.json"
    res: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if "strategies" not in args.phases and (args.out / "search_bench_strategies.json").is_file():
        res["strategies"] = json.loads((args.out / "search_bench_strategies.json").read_text())["strategies"]
    res.update(machine=machine(args.device), args={k: str(v) for k, v in vars(args).items()})

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(path)

    if "strategies" in args.phases and not (args.out / "store").exists():
        t0 = time.time()
        # one knowledge base with embeddings before the runs start, so none of them re-fits them concurrently
        for cmd in (["kb", "init"], ["kb", "embed"]):
            subprocess.run([sys.executable, "-c", "from automc.cli.app import main; main()", *cmd, "--store",
                            args.store], check=True,
                           stdout=subprocess.DEVNULL)
        for seed in args.seeds:
            copy_store(args.store, args.out / f"store-{seed}")
        res["kb_seconds"] = time.time() - t0
    phases = {"strategies": run_strategies, "reuse": run_reuse, "handmade": run_handmade, "honesty": run_honesty}
    for name in args.phases:
        t0 = time.time()
        phases[name](args, res, save)
        res.setdefault("phase_seconds", {})[name] = time.time() - t0
        save()


if __name__ == "__main__":
    main()
