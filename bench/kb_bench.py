"""Knowledge-base benchmark: import of N synthetic experience rows and the named queries, on each store.

Usage: python bench/kb_bench.py [--rows 100000] [--neo4j URI] [--out bench/results]
Targets (issue 2): import < 30 s, < 100 ms per named query on the embedded store.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine  # noqa: E402  (bench/ is on sys.path when run as a script)

from automc.catalog import format_value, load_catalog
from automc.importers import import_file, init_kb
from automc.kb import open_store, queries

MODELS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg11", "vgg13", "vgg16", "vgg19",
          "mobilenetv2"]
DATASETS = {"cifar10": (10, 32, 3, 60000), "cifar100": (100, 32, 3, 60000), "svhn": (10, 32, 3, 99289)}


def synthetic_csv(path: Path, n: int, seed: int = 0) -> None:
    """Experience rows with random catalogue strategies (5% off-grid values) on 30 tasks."""
    rng = random.Random(seed)
    cat = load_catalog()
    methods = list(cat.methods.values())
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "model", "dataset", "hyperparameters", "flops_reduction", "accuracy_change",
                    "base_top1", "base_params_m", "base_flops_m", "num_classes", "num_images", "image_size",
                    "image_channels"])
        for i in range(n):
            m = rng.choice(methods)
            hps = {k: rng.choice(v) for k, v in m.grid.items() if k != "target_ratio_factor"}
            if rng.random() < 0.05 and "finetune_epochs_factor" in hps:
                hps["finetune_epochs_factor"] = round(rng.uniform(0.1, 2.0), 2)
            hps["reduction_ratio"] = round(rng.uniform(0.05, 0.9), 3)
            model, ds = rng.choice(MODELS), rng.choice(list(DATASETS))
            classes, size, ch, images = DATASETS[ds]
            w.writerow([m.name, model, ds, json.dumps(hps), round(rng.uniform(0, 0.9), 3),
                        round(rng.uniform(-0.1, 0.02), 4) + i * 1e-9, 0.9, 1.0 + MODELS.index(model), 100.0,
                        classes, images, size, ch])


def query_samples(store) -> dict[str, dict]:
    cat = load_catalog()
    task = store.named("tasks")[0]["task"]
    ns = cat.strategies("NS")[0]
    return {"method": "LeGR", "setting": "kd_alpha=0.3", "technique": "fine_tuning", "task": task,
            "scheme": "0" * 16, "strategy": ns.id, "dataset": "cifar100", "limit": 100,
            "_": format_value(0.1)}


def bench_store(uri: str, rows_csv: Path, repeats: int = 20) -> dict:
    out: dict = {"store": uri.split("://")[0]}
    with open_store(uri) as s:
        t = time.perf_counter()
        init_kb(s)
        out["init_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        report = import_file(s, rows_csv)
        out["import_seconds"] = time.perf_counter() - t
        out["import_added"] = report.added
        t = time.perf_counter()
        again = import_file(s, rows_csv)
        out["reimport_seconds"] = time.perf_counter() - t
        out["reimport_added"] = again.added
        samples = query_samples(s)
        out["queries"] = {}
        for q in queries.QUERIES.values():
            params = {p.name: samples[p.name] for p in q.params if p.name in samples}
            s.named(q.name, params)  # warm
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                n = len(s.named(q.name, params))
                times.append((time.perf_counter() - t) * 1000)
            out["queries"][q.name] = {"median_ms": statistics.median(times), "max_ms": max(times), "rows": n,
                                      "bulk": q.bulk}
        out["stats"] = s.stats()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--neo4j", default=None, help="also run on this Neo4j URI (its database is wiped)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows_csv = Path(tmp) / "experience.csv"
        synthetic_csv(rows_csv, args.rows)
        results = [bench_store(f"ladybug://{tmp}/kb.lbug", rows_csv)]
        if args.neo4j:
            s = open_store(args.neo4j)
            s.query("MATCH (n) WHERE NOT n:Meta DETACH DELETE n")
            s.close()
            results.append(bench_store(args.neo4j, rows_csv))
    report = {"rows": args.rows, "machine": machine(), "results": results,
              "load_average": [load_before, os.getloadavg()[0]],
              "targets": {"import_seconds": 30, "named_query_ms": 100}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kb_bench.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    lines = [f"# KB benchmark: {args.rows} synthetic experience rows", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"Python {report['machine']['python']}; 1-minute load average {report['load_average'][0]:.2f} before, "
             f"{report['load_average'][1]:.2f} after (other jobs may share the cores).", "",
             "| store | init (catalogue + paper tables) s | import s | re-import s (adds nothing) | "
             "slowest interactive named query, median ms | target |", "|---|---|---|---|---|---|"]
    for r in results:
        slow = max(((k, v) for k, v in r["queries"].items() if not v["bulk"]), key=lambda kv: kv[1]["median_ms"])
        lines.append(f"| {r['store']} | {r['init_seconds']:.1f} | {r['import_seconds']:.1f} | "
                     f"{r['reimport_seconds']:.1f} | {slow[1]['median_ms']:.1f} ({slow[0]}) | < 30 s, < 100 ms |")
    lines += ["", "| named query | " + " | ".join(f"{r['store']} median ms (rows)" for r in results) + " |",
              "|---|" + "---|" * len(results)]
    for name in results[0]["queries"]:
        label = f"{name} (bulk: all rows, for training)" if results[0]["queries"][name]["bulk"] else name
        lines.append(f"| {label} | " + " | ".join(
            f"{r['queries'][name]['median_ms']:.2f} ({r['queries'][name]['rows']})" for r in results) + " |")
    (args.out / "kb_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
