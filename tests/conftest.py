"""Fixtures shared by the whole suite: ../shared data (skips when absent) and stores on every backend."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BACKENDS = ["ladybug", "neo4j"]


def pytest_configure(config: pytest.Config) -> None:
    """A suite started as a background job (``pytest &`` from a script) inherits SIGINT ignored, and so would every
    child it starts: the Ctrl-C tests' children would never see their SIGINT. A handler is reset to the default in
    an exec'd child, so give this process Python's own one."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (real CIFAR subset, pretrained models, KB sources)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


def automc_exe() -> str | None:
    """The installed ``automc`` console script of this interpreter's environment (CI runs pytest from a venv it
    does not activate, so PATH may not hold it), else the one on PATH."""
    beside = Path(sys.executable).with_name("automc")
    return str(beside) if beside.is_file() else shutil.which("automc")


def make_store(backend: str, tmp_path: Path):
    from automc.kb import open_store

    if backend == "ladybug":
        return open_store(f"ladybug://{tmp_path / 'kb.lbug'}")
    uri = os.environ.get("NEO4J_URI")
    if not uri:
        pytest.skip("NEO4J_URI is not set (start one with: docker compose up -d)")
    store = open_store(uri)
    # A test server is wiped: never point NEO4J_URI at a knowledge base you want to keep.
    store.query("MATCH (n) WHERE NOT n:Meta DETACH DELETE n")
    return store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty store on each backend (Neo4j skipped unless NEO4J_URI is set)."""
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


@pytest.fixture(scope="session")
def initialised_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LadybugDB file with the catalogue and paper tables, built once; copy it before writing."""
    from automc.importers import init_kb
    from automc.kb import open_store

    path = tmp_path_factory.mktemp("kb") / "kb.lbug"
    with open_store(f"ladybug://{path}") as s:
        init_kb(s)
    return path


@pytest.fixture
def kb_copy(initialised_kb: Path, tmp_path: Path) -> Path:
    """A private copy of the initialised knowledge base."""
    dst = tmp_path / "kb.lbug"
    for f in initialised_kb.parent.iterdir():
        shutil.copy(f, tmp_path / f.name.replace(initialised_kb.name, dst.name))
    return dst
