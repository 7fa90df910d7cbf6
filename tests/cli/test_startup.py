"""Start-up stays light: ``automc --help`` and the ``kb`` commands import no torch (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from automc import __version__

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torch_geometric", "torch_pruning", "tensorly", "optuna", "sklearn", "matplotlib", "ray", "onnx")

# Runs the real root app with the given arguments, then reports its exit code and which heavy packages were loaded.
PROBE = f"""
import json, sys
from automc.cli.app import app
try:
    app(args=sys.argv[1:], prog_name="automc")
    code = 0
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print("PROBE " + json.dumps({{"code": code, "heavy": heavy}}))
"""


def _probe(*args: str) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, env=env,
                         cwd=REPO)
    lines = out.stdout.splitlines()
    assert lines and lines[-1].startswith("PROBE "), out.stdout + out.stderr
    return json.loads(lines[-1].removeprefix("PROBE ")), "\n".join(lines[:-1])


def test_help_imports_no_heavy_package():
    result, text = _probe("--help")
    assert result == {"code": 0, "heavy": []}
    assert "compress" in text and "kb" in text  # lazy commands are still listed


def test_kb_help_and_stats_import_no_heavy_package(kb_copy):
    result, text = _probe("kb", "--help")
    assert result == {"code": 0, "heavy": []} and "embed" in text
    result, text = _probe("kb", "stats", "--store", f"ladybug://{kb_copy}", "--json")
    assert result == {"code": 0, "heavy": []}
    assert json.loads(text)["nodes"]["Strategy"] == 9042


def test_version():
    result, text = _probe("--version")
    assert result["code"] == 0 and text.strip() == __version__


def test_lazy_command_is_loaded_when_it_runs():
    result, text = _probe("kb", "embed", "--help")
    assert result["code"] == 0 and "--epochs" in text and "torch" in result["heavy"]
    result, text = _probe("compress", "--help")
    assert result["code"] == 0 and "--model" in text
    result, _ = _probe("kb", "embd")
    assert result["code"] == 2
