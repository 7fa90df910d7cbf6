"""Issue 17's transfer measurement: does a per-layer policy found for one model help the search on another depth?

Protocol (fixed before running; written into the results JSON and markdown):

- Source: ``--source-model`` (ResNet-20) with ``--source-weights`` on ``--data`` (``cifar10-search.npz``), γ =
  ``--target-pr``, ``--strategy`` (amc) with one warm-up round of ``--episodes`` random policies, searched in a
  fresh knowledge base (``kb init``) until its round's best policy has been promoted and trained at the search
  fidelity (``--max-steps 1``), no final fine-tune, seed 0. That promoted policy is the knowledge a later search can
  transfer.
- Target: ``--model`` (ResNet-56) with ``--weights``, the same data, γ, strategy and options, on each seed of
  ``--seeds``: once with ``--reuse`` from a copy of the source's store (the source policy, mapped stage by stage, is
  the first episode) and once with ``--no-reuse`` from another copy. A seed draws the same random warm-up episodes in
  both, so the two runs differ only by the transferred policy taking the first episode's place. Each stops after its
  first promoted step (the same compute ± one screening), no final fine-tune.
- Measured per seed (validation only; no test accuracy anywhere): the transferred policy's rung-0 accuracy (prune +
  BatchNorm re-estimation, no fine-tune) against the random warm-up episodes' (mean, best, the share it beats) and
  against one ratio for every layer at the same PR (uniform, screened the same way); the best rung-0 accuracy of the
  round with and without reuse; the promoted step's validation accuracy at the search fidelity with and without.

Commands (CPU: one screening of ResNet-56 is a few tens of seconds on one thread):

    python bench/transfer_bench.py --shared ../shared --out bench/out/transfer --seeds 0 1 2 --jobs 2 --threads 1
    python bench/transfer_bench.py --render bench/out/transfer --results bench/results

Each run saves its record as it finishes; a finished run is skipped when the command is run again. ``--smoke`` (a
ResNet-8 to ResNet-14 of width 4 on synthetic data, 4 episodes) is what ``tests/bench/test_transfer_bench.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from search_bench import copy_store, load_results, machine, prepare_store, save_results  # noqa: E402

RESULTS = "transfer_bench.json"


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    return {"source_model": args.source_model, "source_weights": str(args.source_weights), "model": args.model,
            "weights": str(args.weights), "data": str(args.data), "width": args.width, "target_pr": args.target_pr,
            "strategy": args.strategy, "episodes": args.episodes, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "device": args.device, "smoke": bool(args.smoke)}


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = [{"name": "source", "kind": "source", "seed": 0}]
    runs += [{"name": f"{mode}-{seed}", "kind": mode, "seed": seed} for seed in args.seeds
             for mode in ("reuse", "fresh")]
    return runs


def _options(proto: dict[str, Any]) -> dict[str, Any]:
    """One warm-up round of ``episodes`` random policies, its best promoted."""
    n, s = int(proto["episodes"]), proto["strategy"]
    batch = "amc_episodes" if s == "amc" else "seernet_policies"
    return {batch: n, f"{s}_warmup": n, f"{s}_promote": 1}


def _config(proto: dict[str, Any], *, source: bool, seed: int, store: str, run_out: Path, reuse: bool) -> Any:
    from automc.search import SearchConfig

    return SearchConfig(model=proto["source_model" if source else "model"],
                        weights=proto["source_weights" if source else "weights"], width=proto["width"],
                        data=proto["data"], target_pr=proto["target_pr"], budget=1000.0, max_steps=1,
                        epochs=proto["epochs"], final_epochs=0, batch_size=proto["batch_size"], lr=proto["lr"],
                        device=proto["device"], seed=seed, strategy=proto["strategy"],
                        strategy_options=_options(proto), store=store, out=str(run_out / "out"),
                        cache_dir=str(run_out / "cache"), reuse=reuse, baseline="none", per_round=1)


def run_one(spec: dict[str, Any], proto: dict[str, Any], out: str, threads: int) -> dict[str, Any]:
    """One run in a worker process; its JSON record (``error`` set when it failed)."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.time()
    try:
        rec = _run(spec, proto, Path(out))
    except Exception as e:  # noqa: BLE001 - a failed run is a result to report and to retry
        rec = {"error": f"{type(e).__name__}: {e}"[:2000]}
    rec.update(name=spec["name"], kind=spec["kind"], seed=spec["seed"], wall=time.time() - t0)
    return rec


def _run(spec: dict[str, Any], proto: dict[str, Any], out: Path) -> dict[str, Any]:
    from automc.kb import open_store
    from automc.search import search

    name, source = spec["name"], spec["kind"] == "source"
    run_out = out / "runs" / name
    shutil.rmtree(run_out, ignore_errors=True)  # a run killed in an earlier session starts afresh
    if source:
        store = copy_store(prepare_store(out, embed=True), run_out / "kb")
    else:
        src = load_results(out / RESULTS).get("runs", {}).get("source", {})
        if "error" in src or not src.get("store"):
            raise RuntimeError("needs the source run finished first (run again after it)")
        store = copy_store(src["store"], run_out / "kb")
    cfg = _config(proto, source=source, seed=int(spec["seed"]), store=store, run_out=run_out,
                  reuse=spec["kind"] == "reuse")
    try:
        res = search(cfg)
    finally:
        shutil.rmtree(run_out / "cache", ignore_errors=True)
    with open_store(store) as s:
        rows = s.run_evaluations(res.run_id)
    screens = [r for r in rows if r.get("fidelity") == "screen"]
    steps = [r for r in rows if r.get("fidelity") == "search"]
    keep = ("scheme", "state", "val_accuracy", "pr", "fr", "compute", "seconds")
    rec: dict[str, Any] = {"run_id": res.run_id, "store": store, "compute": res.compute, "seconds": res.seconds,
                           "reuse": dict(res.reuse), "screens": [{k: r.get(k) for k in keep} for r in screens],
                           "steps": [{k: r.get(k) for k in keep} for r in steps]}
    if spec["kind"] == "reuse":
        if not res.reuse.get("transfer") or not screens:
            raise RuntimeError(f"nothing was transferred from the source's store: {res.reuse}")
        # the strategy screens the transferred policies first (``_perlayer.transferred``)
        rec["uniform"] = _uniform_screen(proto, int(spec["seed"]), screens[0]["scheme"], run_out)
    return rec


def _target(proto: dict[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """The target's data (as the search loads it), base model and a task that distils from it."""
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import load_data
    from automc.compress.models import model_for_data

    dev = torch.device(proto["device"])
    data = load_data(proto["data"], val_from="test", seed=seed, device=dev)
    base = model_for_data(proto["model"], data, proto["weights"], width=proto["width"]).to(dev)
    budget = TrainBudget(epochs=float(proto["epochs"] or 1.0), batch_size=int(proto["batch_size"]),
                         lr=float(proto["lr"]))
    return data, base, Task(data, float(proto["target_pr"]), budget, dev, seed, teacher=base)


def _uniform_screen(proto: dict[str, Any], seed: int, scheme: str, run_out: Path) -> dict[str, Any]:
    """Rung 0 of one ratio for every layer at the PR of ``scheme``'s policy (its criterion), as the search screens."""
    from automc.catalog import scheme_key, scheme_text
    from automc.compress.layerwise import PolicySpace
    from automc.search import STRATEGIES
    from automc.search._perlayer import plp_scheme, policy_of
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace

    space = SearchSpace(exclude=())
    key = scheme_key(scheme)
    policy = policy_of(space, key)
    if policy is None:
        return {"error": f"not a per-layer policy: {scheme}"}
    data, base, task = _target(proto, seed)
    layers = PolicySpace(base, data.example_input())
    params = space.strategy(key[0]).params
    uniform = plp_scheme(space, layers.uniform(layers.pr(policy)), str(params["filter_criterion"]),
                         float(params["finetune_epochs_factor"]))
    name = proto["strategy"]
    val_images = int(STRATEGIES[name].OPTIONS[f"{name}_val_images"].default) or None  # as the strategy screens
    ev = Evaluator(base, task, cache_dir=run_out / "uniform-cache", seed=seed, space=space)
    try:
        r = ev.screen(uniform, val_images=val_images)
    finally:
        shutil.rmtree(run_out / "uniform-cache", ignore_errors=True)
    return {"scheme": scheme_text(uniform), "val_accuracy": r.val_accuracy, "pr": r.measured.get("pr"),
            "error": r.error or None}


# -- the driver -----------------------------------------------------------------------------------------------------

def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every run not yet finished in ``args.out`` (the source first, then the targets side by side)."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / RESULTS
    res = load_results(path)
    proto = protocol(args)
    if res.get("protocol") and res["protocol"] != proto:
        raise SystemExit(f"error: {path} holds runs of another protocol; use another --out")
    res.update(protocol=proto, machine=res.get("machine") or machine(args.device))
    res.setdefault("runs", {})
    save_results(path, res)
    todo = [r for r in plan(args) if "error" in res["runs"].get(r["name"], {"error": ""})]
    for phase in ([r for r in todo if r["kind"] == "source"], [r for r in todo if r["kind"] != "source"]):
        if not phase:
            continue
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as ex:
            futs = {ex.submit(run_one, r, proto, str(args.out.resolve()), args.threads): r for r in phase}
            for fut in as_completed(futs):
                spec = futs[fut]
                try:
                    rec = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker that died is a failed run
                    rec = {"name": spec["name"], "kind": spec["kind"], "seed": spec["seed"],
                           "error": f"{type(e).__name__}: {e}"}
                res["runs"][spec["name"]] = rec
                save_results(path, res)
                print(f"[{time.strftime('%H:%M:%S')}] {spec['name']}: {rec.get('error') or 'done'} "
                      f"in {rec.get('wall', 0):.0f} s", flush=True)
    return res


# -- the report -----------------------------------------------------------------------------------------------------

def _acc(rows: list[dict[str, Any]]) -> list[float]:
    return [float(r["val_accuracy"]) for r in rows if r.get("val_accuracy") is not None]


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Per seed and over seeds: the transferred policy at rung 0 against the random warm-up episodes and uniform,
    and the round's best and promoted step with and without reuse."""
    runs = res.get("runs", {})
    seeds: dict[int, dict[str, Any]] = {}
    for name, reuse in runs.items():
        if reuse.get("kind") != "reuse" or "error" in reuse:
            continue
        fresh = runs.get(f"fresh-{reuse['seed']}", {})
        if "error" in fresh or not fresh.get("screens"):
            continue
        t = reuse["screens"][0]
        random_eps = _acc(fresh["screens"])
        beaten = [a for a in random_eps if float(t["val_accuracy"]) > a]
        extra = {r["scheme"] for r in reuse["screens"]} - {r["scheme"] for r in fresh["screens"]}
        step = {k: (runs[k]["steps"] or [{}])[0].get("val_accuracy") for k in (name, f"fresh-{reuse['seed']}")}
        seeds[int(reuse["seed"])] = {
            "transferred": t["val_accuracy"], "transferred_pr": t["pr"], "transferred_scheme": t["scheme"],
            "uniform": reuse.get("uniform", {}).get("val_accuracy"), "uniform_pr": reuse.get("uniform", {}).get("pr"),
            "random_mean": statistics.fmean(random_eps), "random_best": max(random_eps),
            "beats": len(beaten) / len(random_eps), "episodes": len(random_eps),
            # the runs differ only by the transferred policy when the rest of the episodes are the same
            "paired": extra == {t["scheme"]},
            "best_reuse": max(_acc(reuse["screens"])), "best_fresh": max(random_eps),
            "step_reuse": step[name], "step_fresh": step[f"fresh-{reuse['seed']}"],
            "compute_reuse": reuse["compute"], "compute_fresh": fresh["compute"],
            "seconds_reuse": reuse["seconds"], "seconds_fresh": fresh["seconds"]}
    over: dict[str, Any] = {}
    if seeds:
        for k in ("transferred", "uniform", "random_mean", "random_best", "beats", "best_reuse", "best_fresh",
                  "step_reuse", "step_fresh", "compute_reuse", "compute_fresh"):
            xs = [float(v[k]) for v in seeds.values() if v.get(k) is not None]
            if xs:
                over[k] = {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                           "n": len(xs)}
    return {"seeds": seeds, "over": over}


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.2f}%"


def render(out: Path, results: Path, name: str = "transfer_bench17") -> dict[str, Any]:
    """Write ``<results>/<name>.md``, ``.json`` and ``.png`` from ``<out>``; returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = load_results(out / RESULTS)
    proto, mach, runs = res["protocol"], res.get("machine", {}), res.get("runs", {})
    summary = summarise(res)
    src = runs.get("source", {})
    lines = [f"# Does a per-layer policy transfer to another depth? (`bench/transfer_bench.py`"
             f"{', smoke mode' if proto.get('smoke') else ''})", "",
             "## Protocol (fixed before running)", "",
             f"- Source: `{proto['source_model']}`, `--strategy {proto['strategy']}`, one warm-up round of "
             f"{proto['episodes']} random policies, its best promoted to the search fidelity (`--max-steps 1`), "
             f"seed 0, fresh KB. Target: `{proto['model']}`, the same data (`{Path(str(proto['data'])).name}`), γ = "
             f"{proto['target_pr']}, strategy and options, seeds {sorted(summary['seeds']) or '–'}: `--reuse` from a "
             "copy of the source's store (the source policy, mapped stage by stage, is the first episode) vs "
             "`--no-reuse` (the same random episodes otherwise). Each stops after its first promoted step; no final "
             "fine-tune; validation accuracy only.",
             f"- Machine: {mach.get('cpu')}, {mach.get('cores')} cores, GPU {mach.get('gpu') or 'none'}, torch "
             f"{mach.get('torch')}.", ""]
    if src.get("steps"):
        s0 = src["steps"][0]
        lines += [f"Source policy (rung 1 validation {_pct(s0.get('val_accuracy'))}, PR {s0.get('pr'):.3f}): "
                  f"`{s0['scheme']}`.", ""]
    lines += ["## Per seed (rung 0: prune + BatchNorm re-estimation, no fine-tune)", "",
              "| seed | transferred | its PR | uniform, same PR | random episodes: mean / best | transferred beats "
              "| best of round: reuse / fresh | promoted step: reuse / fresh | compute: reuse / fresh | paired |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for seed, v in sorted(summary["seeds"].items()):
        lines.append(f"| {seed} | {_pct(v['transferred'])} | {v['transferred_pr']:.3f} | {_pct(v['uniform'])} | "
                     f"{_pct(v['random_mean'])} / {_pct(v['random_best'])} | {v['beats']:.0%} of {v['episodes']} | "
                     f"{_pct(v['best_reuse'])} / {_pct(v['best_fresh'])} | {_pct(v['step_reuse'])} / "
                     f"{_pct(v['step_fresh'])} | {v['compute_reuse']:.2f} / {v['compute_fresh']:.2f} | "
                     f"{'yes' if v['paired'] else 'no'} |")
    o = summary["over"]

    def ms(k: str) -> str:
        return f"{_pct(o[k]['mean'])} ± {100 * o[k]['sd']:.2f}" if k in o else "–"

    if o:
        lines += ["", f"Over {o['transferred']['n']} seeds (mean ± sd): transferred {ms('transferred')}, uniform at "
                  f"its PR {ms('uniform')}, random episodes {ms('random_mean')} (best {ms('random_best')}); the "
                  f"transferred policy beats {100 * o['beats']['mean']:.0f}% of the random episodes; best of the round "
                  f"{ms('best_reuse')} with reuse vs {ms('best_fresh')} without; promoted step {ms('step_reuse')} vs "
                  f"{ms('step_fresh')}."]
    failed = {n: r["error"] for n, r in runs.items() if "error" in r}
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"{n}: {e}" for n, e in sorted(failed.items()))]
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")
    (results / f"{name}.json").write_text(json.dumps({**res, "summary": summary}, indent=1, default=str))
    if summary["seeds"]:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, (seed, v) in enumerate(sorted(summary["seeds"].items())):
            eps = _acc(runs[f"fresh-{seed}"]["screens"])
            first = i == 0  # one legend entry per kind
            ax.scatter([i] * len(eps), [100 * a for a in eps], s=12, c="grey", label="random" if first else None)
            ax.scatter([i], [100 * v["transferred"]], marker="*", s=120, c="C3", label="transferred" if first else None)
            if v["uniform"] is not None:
                ax.scatter([i], [100 * v["uniform"]], marker="s", s=40, c="C0", label="uniform" if first else None)
        ax.set_xticks(range(len(summary["seeds"])), [f"seed {s}" for s in sorted(summary["seeds"])])
        ax.set_ylabel("rung-0 validation accuracy (%)")
        ax.set_title(f"{proto['source_model']} policy on {proto['model']} ({proto['strategy']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / f"{name}.png", dpi=120)
        plt.close(fig)
    return summary


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    p.add_argument("--source-model", default="resnet20")
    p.add_argument("--source-weights", type=Path, help="[<shared>/models/<source-model>-cifar10.th]")
    p.add_argument("--model", default="resnet56")
    p.add_argument("--weights", type=Path, help="[<shared>/models/<model>-cifar10.th]")
    p.add_argument("--data", help="[<shared>/datasets/cifar10-search.npz]")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--target-pr", type=float, default=0.4)
    p.add_argument("--strategy", default="amc", choices=("amc", "seernet"))
    p.add_argument("--episodes", type=int, default=16, help="random warm-up policies of the one round [16]")
    p.add_argument("--epochs", type=float, default=None, help="search fidelity [the tool's default]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="ResNet-8 to ResNet-14 of width 4 on synthetic data")
    p.add_argument("--out", type=Path, default=Path("bench/out/transfer"))
    p.add_argument("--render", type=Path, default=None, help="render a --out folder into --results and exit")
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    p.add_argument("--name", default="transfer_bench17")
    args = p.parse_args(argv)
    if args.smoke:
        args.source_model, args.model, args.width, args.episodes, args.epochs = "resnet8", "resnet14", 4, 4, 0.2
        args.batch_size, args.lr, args.seeds = 32, 0.05, args.seeds[:1]
        args.data, args.source_weights, args.weights = smoke_inputs(args.out)
    s = args.shared
    args.source_weights = args.source_weights or s / "models" / f"{args.source_model}-cifar10.th"
    args.weights = args.weights or s / "models" / f"{args.model}-cifar10.th"
    args.data = args.data or str(s / "datasets" / "cifar10-search.npz")
    return args


def smoke_inputs(out: Path) -> tuple[str, Path, Path]:
    """Synthetic 4-class data with a validation part, and a ResNet-8 and a ResNet-14 of width 4 trained on it."""
    import numpy as np
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import synthetic
    from automc.compress.models import build_model
    from automc.compress.train import finetune

    out.mkdir(parents=True, exist_ok=True)
    data_path, paths = out / "smoke-data.npz", (out / "smoke-resnet8.pt", out / "smoke-resnet14.pt")
    data = synthetic(num_classes=4, per_class=32, size=16, test_per_class=16, val_fraction=0.25, seed=0)
    if not data_path.is_file():
        arrays = {f"{k}_{part}": v for part in ("train", "val", "test") for k, v in (
            ("x", data.x[part].permute(0, 2, 3, 1).numpy()), ("y", data.y[part].numpy()))}
        np.savez(data_path, **arrays)
    for name, path in zip(("resnet8", "resnet14"), paths, strict=True):
        if not path.is_file():
            torch.manual_seed(0)
            model = build_model(name, 4, width=4)
            finetune(model, Task(data, 0.4, TrainBudget(epochs=4, batch_size=32, lr=0.05)), 4)
            torch.save(model.state_dict(), path)
    return str(data_path), *paths


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.render:
        summary = render(args.render, args.results, args.name)
        print(json.dumps(summary["over"], indent=1))
        return
    bench(args)


if __name__ == "__main__":
    main()
