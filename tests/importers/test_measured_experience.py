"""The project's measured experience: shipped with provenance, loaded by ``kb init``, generated from bench results,
and used to weigh published experience by its agreement with what was measured."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from automc.embed.agreement import MEASURED, experience_weight, source_weights, store_source_weights
from automc.importers import builtin_measured, init_kb
from automc.kb import open_store

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "bench" / "measured_experience.py"
PAPER = "AutoMC paper (Wang, Wang, Shi; ICDE 2024)"


def _measured(store) -> list[dict]:
    rows = [{**r, "method": m} for m in ("NS", "SFP", "LeGR", "HOS", "LFB", "LMA")
            for r in store.named("experiences-of-method", {"method": m})]
    return [r for r in rows if r["source"].startswith(MEASURED)]


def test_kb_init_loads_the_measured_experience_with_provenance(kb_copy):
    with open_store(f"ladybug://{kb_copy}") as s:
        rows = _measured(s)
        shipped = builtin_measured().read_text().count("\n") - 1
        assert len(rows) == shipped > 0
        assert {r["model"] for r in rows} == {"resnet20"} and {r["dataset"] for r in rows} == {"cifar10"}
        for r in rows:  # provenance: the result file, the machine, the epochs and the date of every row
            assert "bench/results/" in r["source"] and " epochs; " in r["source"] and "2026-" in r["source"]
            assert ("CPU" in r["source"]) != ("H100" in r["source"])
        lma = [r for r in rows if r["method"] == "LMA" and r["source"].endswith("methods-resnet20-cpu-10ep.json")]
        assert len(lma) == 1 and lma[0]["ar"] == pytest.approx(-0.016094420600858354)  # README: LMA -1.61%
        assert lma[0]["pr"] == pytest.approx(0.4008201036622894) and lma[0]["fr"] == pytest.approx(0.3909029213554)
        before = s.stats()
        assert init_kb(s).added == {}  # loading twice changes nothing
        assert s.stats() == before


def test_the_generator_reproduces_the_shipped_file_from_the_results(tmp_path):
    check = [sys.executable, str(GENERATOR), "--check", "--out", str(builtin_measured())]
    done = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # A changed result makes the committed file out of date: the check can fail.
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results, ignore=shutil.ignore_patterns("*.png", "*.csv"))
    f = results / "methods-resnet20-cpu-10ep.json"
    data = json.loads(f.read_text())
    data["runs"][3]["ar"] -= 0.01
    f.write_text(json.dumps(data))
    done = subprocess.run([*check, "--results", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "out of date" in done.stderr


def _rows(source: str, accuracies: dict[str, float], model: str = "resnet20", target: float = 0.4) -> list[dict]:
    return [{"source": source, "method": m, "model": model, "dataset": "cifar10", "target_pr": target,
             "accuracy": a, "ar": None} for m, a in accuracies.items()]


def test_a_source_ranking_methods_opposite_to_the_measured_ones_weighs_nothing():
    measured = f"{MEASURED} [cpu; 10 epochs]"
    ours = {"SFP": 0.90, "LMA": 0.89, "LeGR": 0.88, "NS": 0.87, "HOS": 0.86, "LFB": 0.85}
    opposite = {m: 1.0 - a for m, a in ours.items()}
    agreeing = {"SFP": 0.93, "LMA": 0.925, "LeGR": 0.91, "NS": 0.92, "HOS": 0.90, "LFB": 0.80}  # one swap
    rows = (_rows(f"{measured}: bench/results/a.json", dict(list(ours.items())[:3]))
            + _rows(f"{measured}: bench/results/b.json", dict(list(ours.items())[3:]))
            + _rows("opposite", opposite) + _rows("agreeing", agreeing)
            + _rows("elsewhere", opposite, model="vgg16"))
    w = source_weights(rows)
    assert w["opposite"] == 0.0
    assert w["agreeing"] == pytest.approx(1 - 6 * 2 / (6 * 35))  # Spearman with one adjacent swap: 0.943
    assert "elsewhere" not in w and experience_weight(w, "elsewhere") == 1.0  # no overlap, no evidence
    assert experience_weight(w, f"{measured}: bench/results/a.json") == 1.0


def test_the_papers_tables_disagree_with_our_measurements(kb_copy):
    with open_store(f"ladybug://{kb_copy}") as s:
        w = store_source_weights(s)
    assert experience_weight(w, PAPER) == 0.0  # Table 3 ranks LFB first on ResNet-20; we measure it last
    assert all(v == 1.0 for k, v in w.items() if k.startswith(MEASURED))


def test_nn_exp_counts_an_experience_by_its_weight():
    import torch

    from automc.embed.experience import NNExp

    torch.manual_seed(0)
    net = NNExp(4, 8, hidden=4, dropout=0.0)
    emb, feats, targets = torch.randn(3, 4), torch.randn(3, 8), torch.randn(3, 3)
    with torch.no_grad():
        weighted = float(net.loss(emb, feats, targets, row_weights=torch.tensor([1.0, 0.0, 1.0])))
        kept = float(net.loss(emb[[0, 2]], feats[[0, 2]], targets[[0, 2]]))
        everything = float(net.loss(emb, feats, targets))
    assert weighted == pytest.approx(kept)  # weight 0: as if the experience were not there
    assert everything != pytest.approx(kept)
