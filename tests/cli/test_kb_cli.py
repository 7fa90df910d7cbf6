"""``automc kb`` in-process with CliRunner, plus one smoke test of the installed console script."""

from __future__ import annotations

import json
import subprocess

from typer.testing import CliRunner

from automc.cli.app import app
from automc.importers import builtin_measured
from tests.conftest import automc_exe

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_stats_query_and_named_query(kb_copy):
    store = f"ladybug://{kb_copy}"
    res = _invoke("kb", "stats", "--store", store, "--json")
    assert res.exit_code == 0
    stats = json.loads(res.stdout)
    assert stats["nodes"]["Strategy"] == 9042 and stats["nodes"]["Method"] == 7
    res = _invoke("kb", "query", "--named", "strategies-of-method", "--param", "method=SFP", "--store", store, "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 90
    res = _invoke("kb", "query", "MATCH (m:Method {name: $m}) RETURN m.name AS name", "--param", "m=LeGR",
                  "--store", store, "--json")
    assert json.loads(res.stdout) == [{"name": "LeGR"}]
    res = _invoke("kb", "query", "--named", "methods", "--store", store)
    assert res.exit_code == 0 and "HOS" in res.stdout


def test_errors_are_one_line_with_nonzero_exit(kb_copy, tmp_path):
    store = f"ladybug://{kb_copy}"
    bad = tmp_path / "bad.csv"
    bad.write_text("table,algorithm,model,dataset,target_pr,params_m,pr_pct,flops_g,fr_pct,acc_pct,acc_change_pct\n"
                   "2,NS,resnet56,cifar10,0.4,0.54,40.02,0.12,55.68,89.19,-2.03\n"
                   "2,NS,resnet56,mnist,0.4,0.54,40.02,0.12,55.68,89.19,-2.03\n")
    res = _invoke("kb", "import", str(bad), "--store", store)
    assert res.exit_code == 1
    assert f"{bad}:3: dataset: unknown dataset 'mnist'" in res.stderr
    res = _invoke("kb", "query", "--named", "nope", "--store", store)
    assert res.exit_code == 1 and res.stderr.startswith("error: no named query 'nope'")
    res = _invoke("kb", "query", "MATCH (n:Nope) RETURN n", "--store", store)
    assert res.exit_code == 1 and "error:" in res.stderr


def test_init_export_import_round_trip(tmp_path):
    a, b = f"ladybug://{tmp_path / 'a.lbug'}", f"ladybug://{tmp_path / 'b.lbug'}"
    res = _invoke("kb", "init", "--store", a, "--json")
    assert res.exit_code == 0
    measured = builtin_measured().read_text().count("\n") - 1  # the project's own measured experience
    assert json.loads(res.stdout)["added"]["Experience"] == 80 + measured
    assert _invoke("kb", "export", str(tmp_path / "dump"), "--store", a).exit_code == 0
    assert _invoke("kb", "import", str(tmp_path / "dump"), "--store", b).exit_code == 0
    sa = json.loads(_invoke("kb", "stats", "--store", a, "--json").stdout)
    sb = json.loads(_invoke("kb", "stats", "--store", b, "--json").stdout)
    assert sa == sb


def test_installed_console_script(tmp_path):
    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    out = subprocess.run([exe, "kb", "methods"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "9042 strategies" in out.stdout
    # a read-only command on a missing store says so and creates nothing
    out = subprocess.run([exe, "kb", "stats", "--store", f"ladybug://{tmp_path / 'k.lbug'}", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("error: no knowledge base at")
    assert "automc kb init" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_write_queries_need_write_and_init_repairs(kb_copy):
    store = f"ladybug://{kb_copy}"
    res = _invoke("kb", "query", "MATCH (n) DETACH DELETE n", "--store", store)
    assert res.exit_code == 1 and "read-only" in res.stderr
    assert json.loads(_invoke("kb", "stats", "--store", store, "--json").stdout)["nodes"]["Strategy"] == 9042
    assert _invoke("kb", "query", "MATCH (n) DETACH DELETE n", "--write", "--store", store).exit_code == 0
    res = _invoke("kb", "stats", "--store", store)
    assert res.exit_code == 1 and "run 'automc kb init' to repair it" in res.stderr
    res = _invoke("kb", "init", "--store", store, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["nodes"]["Strategy"] == 9042
