"""Turn the project's own measured results (each method alone, ``bench/results``) into an experience file.

The output is the experience importer's CSV (``automc.importers.experience``) with a ``source`` column that names
the result file, machine, fine-tune epochs and date of every row; ``automc kb init`` loads it beside the paper's
tables. Run ``python bench/measured_experience.py`` after adding results; ``--check`` fails when the committed CSV
differs from what the committed JSON gives (tests run it, so the file cannot drift).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "automc" / "importers" / "data" / "automc-measured.csv"
SOURCE = "automc-measured"  # every row's source starts with this; the prior tells measured from published by it

# (result file, date of the commit that added it, machine in words). The JSON files carry no date; the machines are
# described in bench/results/README.md.
FILES = (
    ("methods-resnet20-cpu-10ep-distill.json", "2026-11-22", "2-core Intel Xeon VM, CPU, torch 2.13.0+cpu"),
    ("methods-resnet20-cpu-10ep.json", "2026-11-22", "2-core Intel Xeon VM, CPU, torch 2.13.0+cpu"),
    ("methods-resnet20-cpu.json", "2026-11-22", "2-core Intel Xeon VM, CPU, torch 2.13.0+cpu"),
    ("h100/resnet20_handmade.json", "2026-11-23", "NVIDIA H100 80GB, torch 2.11.0+cu130"),
)
# NS, SFP and LeGR fine-tune with distillation from the input model by default since 2026-11-22; their runs in a
# file without ``distill_alpha`` measured the code before that (labels only) and are left out.
DISTILL_DEFAULT = {"NS", "SFP", "LeGR"}
# CIFAR-10 facts; num_images counts the fine-tune and validation parts, as a search's Task does (compress.identity).
CLASSES, SIZE, CHANNELS = 10, 32, 3
COLUMNS = ("method", "model", "dataset", "hyperparameters", "flops_reduction", "accuracy_change", "base_top1",
           "base_params_m", "base_flops_m", "num_classes", "num_images", "image_size", "image_channels", "source")


def _num(x: float) -> str:
    """A float as the shortest text that reads back the same (stable across runs)."""
    return repr(float(x))


def _row(method: str, model: str, hps: dict, fr: float | None, ar: float, base: dict, images: int,
         source: str) -> dict[str, str]:
    return {"method": method, "model": model, "dataset": "cifar10", "hyperparameters": json.dumps(hps, sort_keys=True),
            "flops_reduction": "" if fr is None else _num(fr), "accuracy_change": _num(ar),
            "base_top1": _num(base["acc"]), "base_params_m": _num(base["params"] / 1e6),
            "base_flops_m": _num(base["flops"] / 1e6), "num_classes": str(CLASSES), "num_images": str(images),
            "image_size": str(SIZE), "image_channels": str(CHANNELS), "source": source}


def _source(name: str, machine: str, epochs: float, date: str, data: str) -> str:
    """``automc-measured [conditions]: file``; rows with the same text before ``: `` were measured alike, so the
    prior ranks methods within them (``automc.embed.agreement.source_weights``)."""
    return f"{SOURCE} [{machine}; {epochs:g} epochs; {data}; {date}]: bench/results/{name}"


def _methods_rows(name: str, data: dict, date: str, machine: str, catalog: set[str]) -> list[dict[str, str]]:
    """Rows of a ``bench/methods.py`` result: one per catalogue method and target PR."""
    out = []
    base = {"acc": data["base"]["acc_test"], "params": data["base"]["params"], "flops": data["base"]["flops"]}
    images = int(data["train_images"]) + int(data["val_images"])
    for run in data["runs"]:
        method = run["method"]
        if method not in catalog or (method in DISTILL_DEFAULT and "distill_alpha" not in data):
            continue  # TP-L2 is a peer baseline, not a catalogue method; superseded labels-only runs
        settings = data["settings"][method]
        source = _source(name, machine, float(data["epochs"]), date,
                         f"{Path(data['data']).name}, {data['train_images']} fine-tune images")
        out.append(_row(method, data["model"], {**settings, "reduction_ratio": run["pr"]}, run["fr"], run["ar"],
                        base, images, source))
    return out


def _handmade_rows(name: str, data: dict, date: str, machine: str, catalog: set[str], flops: float,
                   images: int) -> list[dict[str, str]]:
    """Rows of a ``search_bench.py --phases handmade`` result: one step to the target, fixed epochs. It records
    neither FLOPs nor the settings beyond one step to the target, so those stay unknown (a method-level record)."""
    out = []
    hand = data["handmade"]
    base = {"acc": hand["base"]["test"], "params": hand["base"]["params"], "flops": flops}
    for method in sorted(hand):
        if method not in catalog:
            continue
        run = hand[method]
        source = _source(name, machine, float(run["epochs"]), date, Path(data["args"]["data"]).name)
        out.append(_row(method, data["args"]["model"], {"target_ratio_factor": 1.0, "reduction_ratio": run["pr"]},
                        None, run["test"] / base["acc"] - 1.0, base, images, source))
    return out


def rows(results: Path = RESULTS) -> list[dict[str, str]]:
    """Every experience row the measured results give, in file order."""
    from automc.catalog import load_catalog

    catalog = set(load_catalog().methods)
    out: list[dict[str, str]] = []
    # base FLOPs per model and images per data file, from a file that measured them (the handmade one did not)
    flops: dict[str, float] = {}
    images: dict[str, int] = {}
    for name, date, machine in FILES:
        data = json.loads((results / name).read_text())
        if "runs" in data:
            flops[data["model"]] = float(data["base"]["flops"])
            images[Path(data["data"]).name] = int(data["train_images"]) + int(data["val_images"])
            out.extend(_methods_rows(name, data, date, machine, catalog))
        else:
            out.extend(_handmade_rows(name, data, date, machine, catalog, flops[data["args"]["model"]],
                                      images[Path(data["args"]["data"]).name]))
    return out


def render(results: Path = RESULTS) -> str:
    """The CSV text (``\\n`` line ends, so the committed file is the same on every platform)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows(results))
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--results", type=Path, default=RESULTS, help="the folder of result files (bench/results)")
    ap.add_argument("--check", action="store_true", help="fail if --out differs from what the results give")
    args = ap.parse_args(argv)
    text = render(args.results)
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is out of date: run python bench/measured_experience.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"{args.out}: {text.count(chr(10)) - 1} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
