"""Issue 16's benchmark: does a search beat compressing by hand at the same total compute?

Protocol (fixed before running; written at the top of the results markdown and in the JSON):

- Task: a pretrained model (CPU: ResNet-20) on ``cifar10-search.npz`` (5 170 training, 5 000 validation and 3 000
  test images, all exact CIFAR-10), γ = ``--target-pr`` (0.4). Selection on validation only; test accuracy is read
  for final models only.
- Search runs: progressive (ranking auto), random, evolution (NSGA-II), TPE and RL, each with a search budget of
  ``--budget`` epoch-equivalents of compute (10) and a final fine-tune of ``--final-epochs`` (10, distillation from
  the base) of the one scheme the tool reports (``--top-k 1``, so the final compute is the same for every run), on
  every seed of ``--seeds`` (≥ 3). The F_mo ablation: progressive with ``ranking=prior`` and ``ranking=random``.
  Each search run's model is the one the tool reports (best validation accuracy); its ``--baseline`` is ``none`` by
  default (the single-method runs below are the baselines, with more compute than the report's would get).
- Single methods: each of the six methods alone at ``target_ratio_factor=1.0`` with the catalogue's middle settings,
  plus Torch-Pruning L2 + KD, given the same total compute as a search run as its fine-tune (``--budget`` +
  ``--final-epochs`` epochs, e.g. 20), distilling from the base, on the same seeds and the same test images, with
  per-image correctness kept for the exact McNemar test. Outside that compute, each single scheme is also measured at
  the search's rung 0 (screen) and rung 1 (search fidelity), so the report can rank the methods by each rung against
  their final test accuracy (the rungs' rank correlation with the final).
- Every run is its own process (``--jobs`` side by side), saved to ``<out>/search_bench.json`` as it finishes; a
  finished run is skipped when the command is run again (so the benchmark spans sessions), a failed one is recorded
  with its error and tried again on the next run. ``--from-results`` takes the runs of a committed results JSON as
  finished, where the ``--out`` folder of an earlier session is gone. ``--only NAME...`` runs a subset (a run's
  name, e.g. ``random-1``, or its group, e.g. ``single-SFP`` or ``progressive``).

Commands. CPU protocol (hours on 2 cores; the results are rendered into bench/results/):

    python bench/search_bench.py --shared ../shared --out bench/out/search-cpu --seeds 0 1 2 --jobs 2 --threads 1
    python bench/search_bench.py --render bench/out/search-cpu --results bench/results

GPU session (ResNet-56, search budget and final fine-tune of 30 epoch-equivalents each; the issue's target is a
search + final fine-tune inside 10 minutes of one H200, so with 10 minutes of device time run one seed of
progressive and the two strongest single methods first, the rest in later sessions; prepare it on the CPU first):

    python bench/search_bench.py --shared ../shared --model resnet56 --device cuda --budget 30 --final-epochs 30 \
        --seeds 0 1 2 --jobs 3 --threads 4 --target-acc base --out bench/out/search-gpu \
        --only base progressive-0 single-SFP-0 single-LMA-0
    python bench/search_bench.py --render bench/out/search-gpu --results bench/results --name search_bench16_gpu

Smoke mode (``--smoke``: a width-4 small CNN trained one epoch on the built-in ``digits``, tiny budgets, one seed,
progressive and random, NS and SFP; a few minutes on 2 cores) is what ``tests/bench/test_search_bench.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

STRATEGIES = ("progressive", "random", "evolution", "tpe", "rl", "amc", "seernet")
PER_LAYER = ("amc", "seernet")  # each also gets a ``uniform-<strategy>-<seed>`` run: its policy against uniform
# the F_mo ablation: progressive ranking its candidates by the prior only, and in random order
ABLATION = {"progressive-prior": {"ranking": "prior"}, "progressive-random": {"ranking": "random"}}
SINGLE = ("NS", "SFP", "LeGR", "HOS", "LFB", "LMA", "TP-L2")
RESULTS = "search_bench.json"


def machine(device: str | None = None) -> dict[str, Any]:
    """The machine (``bench/_common.py``); ``device`` is accepted for the callers of the old signature."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import machine as _machine

    return _machine()


def code_version() -> str:
    """The commit of the automc code a run imports (``+dirty`` when ``automc/`` has changes), so the records of
    runs made with different code in one results file say which was which."""
    import automc

    repo = Path(automc.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                "automc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# -- the plan -----------------------------------------------------------------------------------------------------

def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the protocol, named ``<group>-<seed>``, in the order they start (seed by seed)."""
    runs: list[dict[str, Any]] = [{"name": "base", "group": "base", "kind": "base", "seed": 0}]
    for seed in args.seeds:
        for strategy in args.strategies:
            runs.append({"name": f"{strategy}-{seed}", "group": strategy, "kind": "search", "strategy": strategy,
                         "options": _per_layer_options(strategy, args), "seed": seed})
        for group in args.ablation:
            runs.append({"name": f"{group}-{seed}", "group": group, "kind": "search", "strategy": "progressive",
                         "options": dict(ABLATION[group]), "seed": seed})
        for method in args.singles:
            runs.append({"name": f"single-{method}-{seed}", "group": f"single-{method}", "kind": "single",
                         "method": method, "seed": seed})
        for strategy in (s for s in args.strategies if s in PER_LAYER):
            runs.append({"name": f"uniform-{strategy}-{seed}", "group": f"uniform-{strategy}", "kind": "uniform",
                         "of": f"{strategy}-{seed}", "seed": seed})
    if args.only:
        wanted = set(args.only)
        runs = [r for r in runs if r["name"] in wanted or r["group"] in wanted]
    return runs


def _per_layer_options(strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    """A per-layer strategy's round size and warm-up when ``--per-layer-episodes`` sets them (smoke mode does)."""
    n = getattr(args, "per_layer_episodes", None)
    if strategy not in PER_LAYER or n is None:
        return {}
    batch = "amc_episodes" if strategy == "amc" else "seernet_policies"
    return {batch: int(n), f"{strategy}_warmup": int(n)}


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """What every run of this benchmark shares (a re-run with another protocol into the same --out is refused)."""
    return {"model": args.model, "width": args.width, "weights": str(args.weights), "data": str(args.data),
            "val_data": str(args.val_data) if args.val_data else None, "target_pr": args.target_pr,
            "budget": args.budget, "final_epochs": args.final_epochs, "epochs": args.epochs,
            "single_epochs": args.budget + args.final_epochs, "top_k": args.top_k, "per_round": args.per_round,
            "max_length": args.max_length, "batch_size": args.batch_size, "lr": args.lr, "reuse": args.reuse,
            "baseline": args.baseline, "screen": args.screen, "device": args.device, "threads": args.threads,
            "target_acc": args.target_acc, "per_layer_episodes": args.per_layer_episodes,
            "seeds": list(args.seeds), "strategies": list(args.strategies), "ablation": list(args.ablation),
            "singles": list(args.singles), "smoke": bool(args.smoke)}


# -- one run, in its own process -----------------------------------------------------------------------------------

def run_one(spec: dict[str, Any], proto: dict[str, Any], out: str, store: str | None) -> dict[str, Any]:
    """One run of the plan in a worker process; returns its JSON record (``error`` set when it failed)."""
    import torch

    torch.set_num_threads(int(proto["threads"]))
    code = code_version()  # at the start: the checkout may move on while a run trains
    t0 = time.time()
    try:
        if spec["kind"] == "search":
            rec = _search_run(spec, proto, Path(out), store)
        elif spec["kind"] == "single":
            rec = _single_run(spec, proto, Path(out))
        elif spec["kind"] == "uniform":
            rec = _uniform_run(spec, proto, Path(out))
        else:
            rec = _base_run(proto)
    except Exception as e:  # noqa: BLE001 - a failed run is a result to report, not a reason to stop the bench
        rec = {"error": f"{type(e).__name__}: {e}"[:2000]}
    rec.update(name=spec["name"], group=spec["group"], kind=spec["kind"], seed=spec["seed"], wall=time.time() - t0,
               code=code, cpu=machine()["cpu"], finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return rec


def _search_run(spec: dict[str, Any], proto: dict[str, Any], out: Path, store: str | None) -> dict[str, Any]:
    from automc.kb import open_store
    from automc.search import search

    name = spec["name"]
    for stale in (out / "stores" / name, out / "runs" / name):  # a run killed in an earlier session starts afresh
        shutil.rmtree(stale, ignore_errors=True)
    run_store = copy_store(store, out / "stores" / name) if store else \
        f"ladybug://{(out / 'stores' / name / 'kb.lbug').resolve()}"
    cache = out / "cache" / name
    cfg = search_config(spec, proto, run_store, out / "runs" / name, cache)
    try:
        res = search(cfg)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # the models of every step: gigabytes over a benchmark
    with open_store(run_store) as s:
        rows = s.run_evaluations(res.run_id)
        tests = {r["id"]: r for r in s.named("test-records", {"run": res.run_id})}
    found = found_row(res.best or res.front)
    rec: dict[str, Any] = {"run_id": res.run_id, "state": res.state, "store": run_store, "compute": res.compute,
                           "budget": res.budget, "evaluations": res.evaluations, "failed": res.failed,
                           "seconds": res.seconds, "overhead": res.overhead, "baseline": dict(res.baseline),
                           "quality": list(res.learnt.get("quality") or []), "options": spec["options"]}
    if found is not None:
        t = tests.get(found.get("evaluation_id")) or {}
        final = next((r for r in rows if r["id"] == found.get("evaluation_id")), {})
        rec["final_compute"] = final.get("compute") if found.get("fidelity") == "final" else None
        rec["found"] = {"scheme": found["scheme"], "evaluation_id": found.get("evaluation_id"),
                        "fidelity": found.get("fidelity"), "pr": found.get("pr"), "fr": found.get("fr"),
                        "val_accuracy": found.get("val_accuracy"), "test_accuracy": found.get("test_accuracy"),
                        "test_correct_bits": t.get("test_correct_bits"), "test_ids_hash": t.get("test_ids_hash")}
    base_rows = [r for r in rows if r.get("fidelity") == "baseline" and r["id"] in tests]
    if base_rows:
        b = base_rows[-1]
        rec["baseline"].update(test_correct_bits=b.get("test_correct_bits") or tests[b["id"]]["test_correct_bits"],
                               test_ids_hash=tests[b["id"]]["test_ids_hash"], test_accuracy=b.get("accuracy"))
    rec["points"] = [{k: r.get(k) for k in ("step", "scheme", "state", "fidelity", "val_accuracy", "pr", "fr",
                                            "compute", "seconds")}
                     for r in rows if r.get("fidelity") == "search"]
    return rec


def search_config(spec: dict[str, Any], proto: dict[str, Any], store: str, run_out: Path, cache: Path) -> Any:
    """The ``SearchConfig`` of a search run of the plan (as given: ``config.resolve`` fills the tool's defaults)."""
    from automc.search import SearchConfig

    return SearchConfig(model=proto["model"], width=proto["width"], weights=proto["weights"], data=proto["data"],
                        val_data=proto["val_data"], target_pr=proto["target_pr"], budget=float(proto["budget"]),
                        epochs=proto["epochs"], final_epochs=proto["final_epochs"], top_k=proto["top_k"],
                        per_round=proto["per_round"], max_length=proto["max_length"], batch_size=proto["batch_size"],
                        lr=proto["lr"], baseline=proto["baseline"], device=proto["device"],
                        seed=int(spec["seed"]), strategy=spec["strategy"], strategy_options=spec["options"] or None,
                        store=store, out=str(run_out), cache_dir=str(cache),
                        # only progressive and the per-layer strategies learn from other tasks (the tool refuses
                        # --reuse for the others)
                        reuse=bool(proto["reuse"]) and spec["strategy"] in ("progressive", *PER_LAYER),
                        # rung 0 (``--screen``, newer than this bench's first version): passed only when set
                        **({"screen": int(proto["screen"])} if proto.get("screen") else {}))


def found_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model the tool reports (``search.report``'s rule): among the rows meeting the targets, a final model
    before a search point, the best validation accuracy (then PR); never chosen by test accuracy."""
    rows = [r for r in rows if r.get("fidelity") == "final"] or list(rows)
    return max(rows, key=lambda r: (r.get("val_accuracy") or 0.0, r.get("pr") or 0.0), default=None)


def _task(proto: dict[str, Any], seed: int, epochs: float) -> tuple[Any, Any, Any]:
    """The data (as the search loads it), the base model and a task of ``epochs`` that distils from the base."""
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import load_data
    from automc.compress.models import model_for_data

    dev = torch.device(proto["device"])
    data = load_data(proto["data"], val_data=proto["val_data"], val_from="test", seed=seed, device=dev)
    base = model_for_data(proto["model"], data, proto["weights"], width=proto["width"]).to(dev)
    budget = TrainBudget(epochs=float(epochs), batch_size=int(proto["batch_size"]), lr=float(proto["lr"]))
    return data, base, Task(data, float(proto["target_pr"]), budget, dev, seed, teacher=base)


def _base_run(proto: dict[str, Any]) -> dict[str, Any]:
    from automc.compress.scheme import measure

    _, base, task = _task(proto, 0, 0.0)
    m = measure(base, task)
    return {"test_accuracy": m.acc_test, "val_accuracy": m.acc_val, "params": m.params, "flops": m.flops,
            "test_images": m.test_total, "test_ids_hash": m.test_ids}


def _single_run(spec: dict[str, Any], proto: dict[str, Any], out: Path) -> dict[str, Any]:
    """One method alone at share 1.0 (catalogue middle settings) through the search's final path, or TP-L2 + KD;
    fine-tuned for the search's total compute (budget + final epochs), metered."""
    import tempfile

    from automc.catalog import scheme_text
    from automc.compress.compute import metered
    from automc.compress.scheme import measure
    from automc.search.config import baseline_scheme
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace

    seed, method = int(spec["seed"]), spec["method"]
    epochs = float(proto["budget"]) + float(proto["final_epochs"])
    data, base, task = _task(proto, seed, epochs)
    before = measure(base, task, test=False)
    if method == "TP-L2":
        sys.path.insert(0, str(Path(__file__).parent))
        import torch
        from methods import tp_l2_baseline

        torch.manual_seed(seed)
        with metered(data) as meter:  # measuring included, as in the search's final path
            model = tp_l2_baseline(base, task, float(proto["target_pr"]), epochs)
            m = measure(model, task)
        scheme = "Torch-Pruning MagnitudeImportance(p=2) + KD(T=4, alpha=0.5)"
        got = {"val_accuracy": m.acc_val, "test_accuracy": m.acc_test, "pr": 1 - m.params / before.params,
               "fr": 1 - m.flops / before.flops, "test_correct_bits": m.test_bits, "test_ids_hash": m.test_ids}
    else:
        key = baseline_scheme(f"{method}(target_ratio_factor=1.0)")
        scheme = scheme_text(key)
        space = SearchSpace(exclude=())  # a method the search excludes is still a hand-made competitor
        with tempfile.TemporaryDirectory(dir=out) as cache:
            ev = Evaluator(base, task, cache_dir=cache, seed=seed, space=space)
            ev.base_measurement(task)  # cached; outside the meter, as the search measures its base in its setup
            with metered(data) as meter:
                result, _ = ev.final(key, task)
            rungs = _rungs(key, base, task, proto, seed, space, Path(cache))
        if not result.ok:
            raise RuntimeError(f"{scheme} failed: {result.error}")
        got = {k: result.measured.get(k) for k in ("val_accuracy", "pr", "fr", "test_correct_bits", "test_ids_hash")}
        got["test_accuracy"] = result.test_accuracy
    return {"scheme": scheme, "epochs": epochs, "compute": meter.epochs, "found": {"scheme": scheme, **got},
            **({"rungs": rungs} if method != "TP-L2" else {})}


def _uniform_run(spec: dict[str, Any], proto: dict[str, Any], out: Path) -> dict[str, Any]:
    """The per-layer policy a search run found against one ratio for every layer at the same PR (the same PLP
    criterion and epochs factor), both applied from the base model with the same final fine-tune (``final_epochs``,
    the search's reapply path, metered); the report tests them paired on the same test images."""
    import tempfile

    from automc.catalog import scheme_key
    from automc.compress.compute import metered
    from automc.compress.layerwise import PolicySpace
    from automc.search._perlayer import plp_scheme, policy_of
    from automc.search.evaluator import Evaluator
    from automc.search.space import SearchSpace

    parent = load_results(out / RESULTS).get("runs", {}).get(spec["of"], {})
    if "error" in parent or not (parent.get("found") or {}).get("scheme"):
        raise RuntimeError(f"needs {spec['of']} finished first (run again after it)")
    space = SearchSpace(exclude=())
    key = scheme_key(parent["found"]["scheme"])
    policy = policy_of(space, key)
    if policy is None:
        raise RuntimeError(f"{spec['of']} reported no per-layer policy: {parent['found']['scheme']}")
    seed = int(spec["seed"])
    data, base, task = _task(proto, seed, float(proto["final_epochs"]))
    layers = PolicySpace(base, data.example_input())
    params = space.strategy(key[0]).params
    uniform = plp_scheme(space, layers.uniform(layers.pr(policy)), str(params["filter_criterion"]),
                         float(params["finetune_epochs_factor"]))
    rec: dict[str, Any] = {"of": spec["of"], "epochs": float(proto["final_epochs"])}
    for label, k in (("learned", key), ("uniform", uniform)):
        with tempfile.TemporaryDirectory(dir=out) as cache:
            ev = Evaluator(base, task, cache_dir=cache, seed=seed, space=space)
            ev.base_measurement(task)  # outside the meter, as everywhere
            with metered(data) as meter:
                result, _ = ev.final(k, task)
        if not result.ok:
            raise RuntimeError(f"{label} {k[0]} failed: {result.error}")
        rec[label] = {"scheme": k[0], "compute": meter.epochs, "test_accuracy": result.test_accuracy,
                      **{f: result.measured.get(f) for f in ("val_accuracy", "pr", "fr", "test_correct_bits",
                                                             "test_ids_hash")}}
    rec["found"] = rec["uniform"]
    return rec


def _rungs(key: tuple[str, ...], base: Any, task: Any, proto: dict[str, Any], seed: int, space: Any,
           cache: Path) -> dict[str, Any]:
    """What the search's rungs see of this scheme (validation accuracy at rung 0, the screen, and rung 1, the search
    fidelity), outside the run's meter: the report ranks methods by each rung against their final test accuracy."""
    import dataclasses

    from automc.search.config import DEFAULTS
    from automc.search.evaluator import Evaluator

    epochs = float(proto["epochs"] if proto["epochs"] is not None else DEFAULTS["epochs"])
    fid = dataclasses.replace(task, budget=dataclasses.replace(task.budget, epochs=epochs))
    ev = Evaluator(base, fid, cache_dir=cache / "rungs", seed=seed, space=space)
    out: dict[str, Any] = {}
    for rung, result in (("screen", ev.screen(key)), ("search", ev.evaluate(key))):
        out[rung] = {"val_accuracy": result.val_accuracy, "compute": result.compute, "seconds": result.seconds,
                     "error": result.error or None}
    return out


# -- the store every search run starts from -------------------------------------------------------------------------

def copy_store(src: str, dst: Path) -> str:
    """A private copy of a LadybugDB store (the file and its side files)."""
    path = Path(src.removeprefix("ladybug://"))
    dst.mkdir(parents=True, exist_ok=True)
    for f in path.parent.iterdir():
        if f.name.startswith(path.name):
            shutil.copy(f, dst / f.name)
    return f"ladybug://{(dst / path.name).resolve()}"


def prepare_store(out: Path, embed: bool) -> str:
    """A knowledge base (catalogue, paper tables, measured experience; embeddings unless ``embed`` is False) built
    once; every search run starts from its own copy, so runs neither share history nor wait on one writer."""
    uri = f"ladybug://{(out / 'kb' / 'kb.lbug').resolve()}"
    if not (out / "kb" / "ready").is_file():
        shutil.rmtree(out / "kb", ignore_errors=True)
        (out / "kb").mkdir(parents=True)
        for cmd in (["kb", "init"], ["kb", "embed"]) if embed else (["kb", "init"],):
            subprocess.run([sys.executable, "-c", "from automc.cli.app import main; main()", *cmd, "--store", uri],
                           check=True, stdout=subprocess.DEVNULL)
        (out / "kb" / "ready").write_text("")
    return uri


def smoke_weights(out: Path) -> Path:
    """The smoke mode's base model: a width-4 small CNN trained one epoch on the built-in digits (once)."""
    path = out / "smallcnn4-digits.pt"
    if not path.is_file():
        import torch

        from automc.compress.builtin import train_base
        from automc.compress.data import load_data
        from automc.compress.models import model_for_data

        data = load_data("digits", seed=0, device="cpu")
        torch.manual_seed(0)
        model = model_for_data("smallcnn", data, width=4)
        train_base(model, data, 1.0, batch_size=64, seed=0, device="cpu")
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


# -- the driver -----------------------------------------------------------------------------------------------------

def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, res: dict[str, Any]) -> None:
    """Atomically: a kill while writing leaves the previous file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    os.replace(tmp, path)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every run of the plan not yet finished in ``args.out``; returns the results."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / RESULTS
    res = load_results(path)
    proto = protocol(args)
    if res.get("protocol") and _fixed(res["protocol"]) != _fixed(proto):
        raise SystemExit(f"error: {path} holds runs of another protocol; use another --out")
    res["protocol"] = proto
    res.setdefault("machine", machine())
    res.setdefault("runs", {})
    if args.from_results:
        adopt(res, load_results(args.from_results), str(args.from_results))
    todo = [r for r in plan(args) if "error" in res["runs"].get(r["name"], {"error": ""})]
    save_results(path, res)
    if not todo:
        return res
    store = None
    if any(r["kind"] == "search" for r in todo) and not args.smoke:
        store = prepare_store(args.out, embed=True)
    # a uniform run compares its search run's policy: it starts once every other run of this invocation is done
    for phase in ([r for r in todo if r["kind"] != "uniform"], [r for r in todo if r["kind"] == "uniform"]):
        if phase:
            _pool(phase, args, proto, store, res, path)
    return res


def adopt(res: dict[str, Any], done: dict[str, Any], where: str) -> int:
    """Take the finished runs of a rendered results file (``--from-results``) as done: the raw ``--out`` folder of
    an earlier session may be gone, but its runs' records are committed. Refused for another protocol."""
    if not done.get("runs"):
        raise SystemExit(f"error: {where} holds no runs")
    if _fixed(done.get("protocol") or {}) != _fixed(res["protocol"]):
        raise SystemExit(f"error: {where} holds runs of another protocol")
    new = {k: v for k, v in done["runs"].items() if "error" not in v and k not in res["runs"]}
    cpu = (done.get("machine") or {}).get("cpu")
    res["runs"].update({k: {"cpu": cpu, **v} if cpu else v for k, v in new.items()})  # a run names its own CPU
    return len(new)


def _pool(todo: list[dict[str, Any]], args: argparse.Namespace, proto: dict[str, Any], store: str | None,
          res: dict[str, Any], path: Path) -> None:
    """Run ``todo`` side by side (``--jobs``), each in its own process, saving each record as it finishes."""
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as ex:
        futs = {ex.submit(run_one, r, proto, str(args.out.resolve()), store): r for r in todo}
        for fut in as_completed(futs):
            spec = futs[fut]
            try:
                rec = fut.result()
            except Exception as e:  # noqa: BLE001 - a worker that died (killed, out of memory) is a failed run
                rec = {"name": spec["name"], "group": spec["group"], "kind": spec["kind"], "seed": spec["seed"],
                       "error": f"{type(e).__name__}: {e}"}
            res["runs"][spec["name"]] = rec
            save_results(path, res)
            acc = (rec.get("found") or {}).get("test_accuracy", rec.get("test_accuracy"))
            what = rec.get("error") or (f"test accuracy {acc:.2%}" if acc is not None else "no model")
            print(f"[{time.strftime('%H:%M:%S')}] {spec['name']}: {what} in {rec.get('wall', 0):.0f} s", flush=True)


def _fixed(proto: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs comparable: everything but the lists of what to run and how many threads."""
    return {k: v for k, v in proto.items() if v is not None and k not in (
        "seeds", "strategies", "ablation", "singles", "threads", "target_acc")}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    p.add_argument("--model", default="resnet20")
    p.add_argument("--width", type=int, default=None, help="first-stage width of a built-in model (smoke: 4)")
    p.add_argument("--weights", type=Path, help="[<shared>/models/<model>-cifar10.th]")
    p.add_argument("--data", help="[<shared>/datasets/cifar10-search.npz]")
    p.add_argument("--val-data", default=None, help="[the data's own validation part]")
    p.add_argument("--target-pr", type=float, default=0.4)
    p.add_argument("--budget", type=float, default=10.0, help="search compute, epoch-equivalents [10]")
    p.add_argument("--final-epochs", type=float, default=10.0, help="final fine-tune of every compared model [10]")
    p.add_argument("--epochs", type=float, default=None, help="search fidelity [the tool's default]")
    p.add_argument("--top-k", type=int, default=1, help="final models per search [1: the same final compute for "
                   "every run]")
    p.add_argument("--per-round", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--baseline", default="none", help="each search run's --baseline [none: the single-method runs "
                   "are the baselines, at the search's whole compute as their fine-tune]")
    p.add_argument("--no-reuse", dest="reuse", action="store_false")
    p.add_argument("--per-layer-episodes", type=int, default=None, help="amc/seernet: policies screened per round "
                   "and random warm-up policies [the tool's defaults]")
    p.add_argument("--screen", type=int, default=None, help="each search run's --screen N (rung 0) [the tool's "
                   "default: off]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--ablation", nargs="*", default=list(ABLATION), choices=list(ABLATION))
    p.add_argument("--singles", nargs="*", default=list(SINGLE), choices=SINGLE)
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="runs or groups to run (e.g. random-1, "
                   "single-SFP, progressive)")
    p.add_argument("--target-acc", default="0.905", help="the accuracy target the report checks: a share, or "
                   "'base' (the base model's test accuracy: the GPU target)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, each in its own process [1]")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run [2]")
    p.add_argument("--smoke", action="store_true", help="tiny model on digits, tiny budgets, 1 seed, 2 strategies, "
                   "2 single methods (a few minutes on 2 cores)")
    p.add_argument("--out", type=Path, default=Path("bench/out/search"))
    p.add_argument("--from-results", type=Path, default=None, metavar="JSON", help="count the finished runs of a "
                   "rendered results file (e.g. bench/results/search_bench16.json) as done: a benchmark spans "
                   "sessions even where the --out folder did not survive")
    p.add_argument("--render", type=Path, default=None, help="render a --out folder into --results and exit")
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    p.add_argument("--name", default="search_bench16", help="file stem of the rendered results [search_bench16]")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.width, args.data = "smallcnn", 4, "digits"
        args.weights = smoke_weights(args.out)
        args.budget, args.final_epochs, args.epochs = 0.5, 0.3, 0.2
        args.per_round, args.max_length, args.batch_size, args.lr, args.reuse = 3, 1, 64, 0.05, False
        args.seeds, args.strategies, args.ablation, args.singles = args.seeds[:1], ["progressive", "random", "amc"], \
            [], ["NS", "SFP"]
        args.per_layer_episodes = 1  # a screening costs a third of an epoch of digits: one fits the smoke budget
        args.target_acc, args.baseline = "base", "kb"  # the smoke run also exercises the report's baseline
    s = args.shared
    args.weights = args.weights or s / "models" / f"{args.model}-cifar10.th"
    args.data = args.data or str(s / "datasets" / "cifar10-search.npz")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.render:
        sys.path.insert(0, str(Path(__file__).parent))
        from search_bench_report import render

        render(args.render, args.results, args.name)
        return
    bench(args)


if __name__ == "__main__":
    main()
