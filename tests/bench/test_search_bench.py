"""``bench/search_bench.py`` end to end in its smoke mode (a tiny CNN on the built-in digits, real searches, real
single-method fine-tunes, each in its own process): the results JSON's shape, a re-run that skips finished runs,
and the rendered markdown's per-seed rows and mean ± sd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "search_bench.py"


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)


@pytest.mark.slow
def test_smoke_runs_saves_skips_finished_runs_and_renders(tmp_path: Path) -> None:
    out, results = tmp_path / "out", tmp_path / "results"
    first = _bench("--smoke", "--out", str(out), "--threads", "1", "--jobs", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    res = json.loads((out / "search_bench.json").read_text())
    proto = res["protocol"]
    assert proto["smoke"] and proto["seeds"] == [0] and proto["strategies"] == ["progressive", "random", "amc"]
    assert proto["single_epochs"] == pytest.approx(proto["budget"] + proto["final_epochs"])
    assert res["machine"]["cpu"] and res["machine"]["torch"]
    runs = res["runs"]
    assert set(runs) == {"base", "progressive-0", "random-0", "amc-0", "single-NS-0", "single-SFP-0", "uniform-amc-0"}
    assert not [n for n, r in runs.items() if "error" in r], {n: r.get("error") for n, r in runs.items()}
    gamma = proto["target_pr"]
    hashes = {runs["base"]["test_ids_hash"]}
    for name in ("progressive-0", "random-0", "amc-0", "single-NS-0", "single-SFP-0", "uniform-amc-0"):
        r = runs[name]
        assert r["seed"] == 0 and r["wall"] > 0
        found = r["found"]
        assert found["pr"] >= gamma - 0.005 and 0.0 <= found["test_accuracy"] <= 1.0
        assert found["test_correct_bits"].startswith(f"{runs['base']['test_images']}:")
        hashes.add(found["test_ids_hash"])
    assert len(hashes) == 1  # every model measured on the same test images: the paired tests are valid
    for name in ("progressive-0", "random-0"):
        r = runs[name]
        assert r["kind"] == "search" and r["state"] == "COMPLETE" and r["points"]
        assert r["compute"] > 0 and all(p["compute"] is not None for p in r["points"])
        assert r["baseline"].get("summary")
    assert runs["progressive-0"]["quality"]  # F_mo's per-round measures, from the stored strategy state
    # the per-layer policy amc reported and the uniform policy of its PR, each with the same final fine-tune
    uni = runs["uniform-amc-0"]
    assert uni["of"] == "amc-0" and uni["learned"]["scheme"] == runs["amc-0"]["found"]["scheme"].split(" > ")[0]
    assert "layer_keep=" in uni["uniform"]["scheme"] and uni["uniform"]["pr"] >= uni["learned"]["pr"] - 0.01
    assert uni["learned"]["compute"] == pytest.approx(uni["uniform"]["compute"], rel=0.05)  # the same final budget
    for name in ("single-NS-0", "single-SFP-0"):
        assert runs[name]["kind"] == "single" and runs[name]["epochs"] == proto["single_epochs"]
        assert runs[name]["compute"] > 0

    again = _bench("--smoke", "--out", str(out), "--threads", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "test accuracy" not in again.stdout  # nothing ran again
    assert json.loads((out / "search_bench.json").read_text())["runs"] == runs

    shown = _bench("--render", str(out), "--results", str(results))
    assert shown.returncode == 0, shown.stderr[-3000:]
    md = (results / "search_bench16.md").read_text()
    assert md.startswith("# Search vs compressing by hand") and "## Protocol (fixed before running)" in md
    for group in ("progressive", "random", "single-NS", "single-SFP"):
        assert f"| {group} | 0 | `" in md  # its seed-0 row
        assert any(line.startswith(f"| {group} | ") and " ± " in line and "(n=1)" in line for line in md.splitlines())
    assert "## Exact McNemar tests, per seed" in md and "## Rungs vs the final fine-tune" in md and "## Targets" in md
    assert "## Per-layer policy vs one ratio for every layer" in md and "| amc | 0 | " in md
    for name in ("single-NS-0", "single-SFP-0"):  # each single scheme as rung 0 and rung 1 saw it
        rungs = runs[name]["rungs"]
        assert all(0.0 <= rungs[k]["val_accuracy"] <= 1.0 and rungs[k]["compute"] > 0 for k in ("screen", "search"))
        assert f"| {name[:-2]} | {rungs['screen']['val_accuracy']:.2%} ± 0.00 (n=1) |" in md
    assert (results / "search_bench16_anytime.png").stat().st_size > 0
    assert (results / "search_bench16_final.png").stat().st_size > 0
    rendered = json.loads((results / "search_bench16.json").read_text())
    assert rendered["summary"]["progressive"]["per_seed"]["0"] == runs["progressive-0"]["found"]["test_accuracy"]
    assert rendered["paired"]["progressive-0 vs single-SFP-0"]["n"] == runs["base"]["test_images"]


def test_every_search_run_of_the_cpu_protocol_is_a_config_the_tool_accepts(tmp_path: Path) -> None:
    """The full protocol's search runs (reuse on, every strategy and the F_mo ablation) pass the tool's own checks;
    a run the tool refuses would be a failed run found only hours into the benchmark."""
    sys.path.insert(0, str(REPO / "bench"))
    import search_bench

    from automc.search.config import resolve

    weights, data = tmp_path / "w.th", tmp_path / "d.npz"
    weights.write_bytes(b"")
    data.write_bytes(b"")
    args = search_bench.parse(["--weights", str(weights), "--data", str(data), "--out", str(tmp_path / "out")])
    proto = search_bench.protocol(args)
    runs = [r for r in search_bench.plan(args) if r["kind"] == "search"]
    assert {r["group"] for r in runs} == {*search_bench.STRATEGIES, *search_bench.ABLATION} and proto["reuse"]
    for r in runs:
        cfg = resolve(search_bench.search_config(r, proto, "ladybug://" + str(tmp_path / "kb.lbug"),
                                                 tmp_path / r["name"], tmp_path / "cache"), None)
        assert cfg.strategy == r["strategy"] and cfg.reuse == (r["strategy"] in ("progressive", "amc", "seernet"))


def test_targets_compare_groups_on_the_seeds_both_finished() -> None:
    """Progressive on seeds 0-1 against a single method on seed 0 only is judged on seed 0: a seed still running on
    one side cannot tilt the verdict."""
    sys.path.insert(0, str(REPO / "bench"))
    from search_bench_report import _targets

    def group(kind: str, per_seed: dict[str, float]) -> dict:
        return {"kind": kind, "per_seed": per_seed, "mean": sum(per_seed.values()) / len(per_seed)}

    summary = {"progressive": group("search", {"0": 0.90, "1": 0.80}),
               "random": group("search", {"0": 0.89}),
               "single-NS": group("single", {"0": 0.895})}
    proto = {"strategies": ["progressive", "random"], "target_acc": "0.84"}
    by = {t["target"]: t for t in _targets(summary, proto, None)}
    # over all seeds progressive (85%) is below NS (89.5%) and random (89%); on the shared seed 0 it is above both
    assert by["best single method"]["met"] is True and "over seeds 0;" in by["best single method"]["text"]
    assert by["every baseline strategy"]["met"] is True
    assert by["absolute accuracy"]["met"] is True  # the absolute target takes every finished seed: 85% >= 84%
    summary["single-NS"] = group("single", {"0": 0.895, "1": 0.85})
    by = {t["target"]: t for t in _targets(summary, proto, None)}
    assert by["best single method"]["met"] is False and "seed 1: 80.00% vs 85.00%" in by["best single method"]["text"]


def test_from_results_adopts_finished_runs_of_the_same_protocol_only(tmp_path: Path) -> None:
    """A fresh --out folder seeded from a committed results JSON skips its finished runs, retries its failed ones,
    keeps runs already in the folder, and refuses a results file of another protocol with one line."""
    weights, data = tmp_path / "w.th", tmp_path / "d.npz"
    out = tmp_path / "out"
    args = ["--weights", str(weights), "--data", str(data), "--out", str(out), "--seeds", "0", "--only", "base"]
    sys.path.insert(0, str(REPO / "bench"))
    import search_bench

    proto = search_bench.protocol(search_bench.parse(args))
    committed = tmp_path / "search_bench16.json"
    committed.write_text(json.dumps({"protocol": proto, "summary": {}, "machine": {"cpu": "Other CPU"}, "runs": {
        "base": {"name": "base", "test_accuracy": 0.9}, "random-0": {"name": "random-0", "error": "killed"}}}))
    res = {"protocol": proto, "runs": {"single-NS-0": {"name": "single-NS-0"}}}
    assert search_bench.adopt(res, json.loads(committed.read_text()), str(committed)) == 1
    assert set(res["runs"]) == {"base", "single-NS-0"}  # the failed run is not adopted: it runs again
    assert res["runs"]["base"]["cpu"] == "Other CPU"  # it keeps the machine it ran on, not this one

    done = _bench(*args, "--from-results", str(committed))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" not in done.stdout  # base was adopted, so nothing ran
    assert json.loads((out / "search_bench.json").read_text())["runs"]["base"]["test_accuracy"] == 0.9

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"protocol": {**proto, "budget": 30.0}, "runs": {"base": {}}}))
    refused = _bench("--weights", str(weights), "--data", str(data), "--out", str(tmp_path / "out2"), "--seeds", "0",
                     "--only", "base", "--from-results", str(other))
    assert refused.returncode != 0 and "other.json holds runs of another protocol" in refused.stderr
    assert not (tmp_path / "out2" / "search_bench.json").exists() or \
        not json.loads((tmp_path / "out2" / "search_bench.json").read_text())["runs"]


def test_per_layer_targets_need_a_significant_win_on_no_seed_lower() -> None:
    """Learned beats uniform only with a higher mean, no seed lower and an exact McNemar win (p < 0.05) on one seed;
    the best of amc/seernet/progressive is checked against every single method on the shared seeds."""
    import numpy as np

    from automc.compress.paired import encode_bits

    sys.path.insert(0, str(REPO / "bench"))
    from search_bench_report import _perlayer_targets

    def model(correct: int, n: int = 400) -> dict:
        bits = np.zeros(n, dtype=bool)
        bits[:correct] = True
        return {"test_accuracy": correct / n, "test_correct_bits": encode_bits(bits), "test_ids_hash": "h"}

    def uniform(seed: int, learned: int, uni: int) -> dict:
        return {"seed": seed, "learned": model(learned), "uniform": model(uni)}

    summary = {"amc": {"kind": "search", "per_seed": {"0": 0.9, "1": 0.9}, "mean": 0.9},
               "single-NS": {"kind": "single", "per_seed": {"0": 0.89, "1": 0.92}, "mean": 0.905}}
    # seed 0: +10 pp (40 images only the learned policy gets: p << 0.05); seed 1: +0.5 pp
    got = _perlayer_targets(summary, {"uniform-amc": [uniform(0, 360, 320), uniform(1, 362, 360)]})
    by = {t["target"]: t for t in got}
    assert by["uniform-amc beats uniform"]["met"] is True
    assert by["per-layer or progressive beats every single method"]["met"] is False  # NS 90.5% > amc 90%
    assert "single-NS 90.50%" in by["per-layer or progressive beats every single method"]["text"]
    # the same means, but lower on seed 1: missed
    got = _perlayer_targets(summary, {"uniform-amc": [uniform(0, 364, 320), uniform(1, 358, 360)]})
    assert got[0]["met"] is False and "lower on seeds 1" in got[0]["text"]
    # higher on every seed but significant on none: missed
    got = _perlayer_targets(summary, {"uniform-amc": [uniform(0, 321, 320), uniform(1, 361, 360)]})
    assert got[0]["met"] is False
