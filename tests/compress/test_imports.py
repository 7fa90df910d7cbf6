"""``automc.compress`` has no import circles, and the registries that replaced them are filled on import."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest
import torch

from automc.errors import ValidationError

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "automc.compress"
SOURCE = REPO / "automc" / "compress"


def _module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports anywhere: at module level, under ``TYPE_CHECKING`` and
    inside functions (a function-level import still closes a circle, only later)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # ``from automc.compress import lowrank`` imports the submodule; ``import METHODS`` the package
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return (found & modules) - {me}


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``automc.compress`` modules it imports, read from the sources with ``ast``."""
    files = sorted(SOURCE.glob("*.py"))
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def test_the_graph_sees_module_level_function_level_and_package_imports():
    graph = import_graph()
    assert "automc.compress.base" in graph["automc.compress.train"]  # module level
    assert "automc.compress.data" in graph["automc.compress.base"]  # under TYPE_CHECKING
    assert PACKAGE in graph["automc.compress.scheme"]  # inside a function: ``from automc.compress import METHODS``
    assert "automc.compress.lowrank" in graph["automc.compress.hos"]  # ``from automc.compress import lowrank``


def test_compress_has_no_import_cycle():
    try:
        TopologicalSorter(import_graph()).prepare()
    except CycleError as e:
        pytest.fail(f"import cycle in automc/compress: {' -> '.join(e.args[1])}")


def test_replacement_layers_and_builtin_datasets_register_on_import_of_the_package():
    """Neither registry imports the modules that fill it, so a fresh interpreter that imports only the registry's
    module must still find every entry (the package ``automc.compress`` imports them)."""
    probe = ("import json; from automc.compress.layers import SPEC_TYPES; from automc.compress.data import "
             "BUILTIN_DATASETS; print(json.dumps([sorted(SPEC_TYPES), sorted(BUILTIN_DATASETS)]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                         cwd=REPO, check=True)
    kinds, datasets = json.loads(out.stdout.splitlines()[-1])
    assert kinds == ["filter_basis", "multi_segment_activation", "tucker2"]
    assert datasets == ["digits"]


def test_load_data_reads_a_registered_dataset_by_name(monkeypatch, tmp_path):
    from automc.compress.data import BUILTIN_DATASETS, from_arrays, load_data

    rng = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 4, 4, 1), generator=rng, dtype=torch.uint8).numpy()
    y = (torch.arange(40) % 2).numpy()

    def tiny(**kw):  # noqa: ANN003, ANN202 - load_data's keyword arguments
        return from_arrays(x, y, x, y, num_classes=2, augment=False, **kw)

    monkeypatch.setitem(BUILTIN_DATASETS, "tiny", tiny)
    d = load_data("tiny", val_share=0.5, device="cpu")
    assert d.num_classes == 2 and d.size("train") == 40 and d.size("val") == 20
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a real path of that name is read as data
    with pytest.raises(ValidationError, match="no dataset found"):
        load_data("tiny")
