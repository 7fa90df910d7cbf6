"""Start-up benchmark (issue 7, item 10): how long a command takes before it does anything, against importing torch.

Usage: python bench/startup.py [--runs 9] [--out bench/results]

Each command runs in a fresh interpreter, exactly as the ``automc`` console script starts it, from this checkout
(PYTHONPATH = the repository root). Runs are interleaved round-robin after one unrecorded warm-up each, so load
from other jobs on a shared machine spreads over every command alike. Reported: median wall time per command and
its ratio to the median of ``python3 -c "import torch"`` in the same run. ``kb stats`` reads a fresh store made
by ``automc kb init`` beforehand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine  # noqa: E402  (bench/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
# The console script's own body (pyproject [project.scripts]), run from this checkout.
AUTOMC = [sys.executable, "-c", "import sys; from automc.cli.app import main; sys.exit(main())"]
BASELINE = "python3 -c 'import torch'"


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    return elapsed


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(runs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    tmp = Path(tempfile.mkdtemp(prefix="automc-startup-"))
    try:
        store = f"ladybug://{tmp / 'kb.lbug'}"
        _time([*AUTOMC, "kb", "init", "--store", store], env)
        commands = {
            "automc --help": [*AUTOMC, "--help"],
            "automc --version": [*AUTOMC, "--version"],
            "automc kb stats": [*AUTOMC, "kb", "stats", "--store", store],
            "automc compress --help": [*AUTOMC, "compress", "--help"],
            BASELINE: [sys.executable, "-c", "import torch"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        load_before = _loadavg()
        for i in range(runs + 1):
            for name, cmd in commands.items():
                t = _time(cmd, env)
                if i:  # the first round only warms the file cache
                    times[name].append(t)
        load_after = _loadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times[BASELINE])
    rows = {name: {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4),
                   "max_s": round(max(ts), 4), "ratio_to_import_torch": round(statistics.median(ts) / base, 3)}
            for name, ts in times.items()}
    return {"benchmark": "startup", "runs": runs, "machine": machine(), "load_average": [load_before, load_after],
            "command": "python -c 'from automc.cli.app import main; main()' ARGS (the console script's body)",
            "results": rows}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Start-up time (bench/startup.py)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']} ({m['platform']}); "
        f"load average before/after {res['load_average'][0]} / {res['load_average'][1]}.",
        f"Median of {res['runs']} interleaved runs per command, each a fresh interpreter; ratio to "
        f"`{BASELINE}` measured in the same run.",
        "",
        *([f"Note: {res['note']}", ""] if res.get("note") else []),
        "| command | median (s) | min (s) | max (s) | ratio to `import torch` |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in res["results"].items():
        lines.append(f"| `{name}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r['ratio_to_import_torch']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--note", default="", help="a line to keep with the results (what the checkout contains)")
    args = ap.parse_args()
    res = run(args.runs)
    if args.note:
        res["note"] = args.note
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "startup.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
