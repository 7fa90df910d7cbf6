"""The tool's own files going bad under a search: poisoned or deleted model-cache entries are rebuilt, and a full
disk (a real, small tmpfs) under the model cache or the store stops the run as INTERRUPTED with one line; resume
then finishes with exactly the budget and no step blamed on the method."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from automc.catalog import scheme_id, scheme_key
from automc.compress.builtin import train_base
from automc.compress.data import load_data
from automc.compress.models import model_for_data
from automc.compress.saving import load_compressed
from automc.errors import DiskError, StoreDiskError
from automc.kb import open_store
from automc.kb.records import GraphBatch
from automc.kb.states import State
from automc.search import SearchConfig, search
from automc.search._base import search_rows
from automc.search.cache import ModelCache
from tests.conftest import automc_exe

torch.set_num_threads(1)
BUDGET = 6


# -- helpers ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A small CNN (width 4) trained one epoch on the built-in digits: the model every search here compresses."""
    data = load_data("digits", seed=0, device="cpu")
    torch.manual_seed(0)
    model = model_for_data("smallcnn", data, width=4)
    train_base(model, data, 1.0, batch_size=64, seed=0, device="cpu")
    path = tmp_path_factory.mktemp("weights") / "smallcnn4.pt"
    torch.save(model.state_dict(), path)
    return path


def _config(weights: Path, d: Path, **kw) -> SearchConfig:
    base = {"model": "smallcnn", "width": 4, "data": "digits", "weights": str(weights), "target_pr": 0.4,
            "budget": 1000.0, "max_steps": BUDGET, "epochs": 0.2, "final_epochs": 0, "strategy": "random",
            "reuse": False, "per_round": 3,
            "max_length": 2, "batch_size": 64, "lr": 0.05, "device": "cpu", "seed": 0,
            "store": f"ladybug://{d / 'kb'}", "cache_dir": str(d / "run")}
    return SearchConfig(**{**base, **kw})


def _cli_args(weights: Path, store: str, cache_dir: Path) -> list[str]:
    return ["search", "--model", "smallcnn", "--width", "4", "--data", "digits", "--weights", str(weights),
            "--target-pr", "0.4", "--budget", "1000", "--max-steps", str(BUDGET), "--epochs", "0.2",
            "--final-epochs", "0",
            "--strategy", "random", "--no-reuse", "--per-round", "3", "--max-length", "2", "--batch-size", "64",
            "--lr", "0.05", "--device", "cpu", "--seed", "0", "--store", store, "--cache-dir", str(cache_dir),
            "--json"]


def _rows(store: str, run_id: str | None = None) -> tuple[str, list[dict]]:
    with open_store(store) as s:
        run_id = run_id or s.list_runs()[0]["id"]
        return run_id, s.run_evaluations(run_id)


def _outcomes(rows: list[dict]) -> dict[str, tuple[str, float | None]]:
    """Counted steps by scheme: state and validation accuracy (a scheme's model depends on seed and scheme only)."""
    return {r["scheme"]: (r["state"], r["val_accuracy"]) for r in search_rows(rows)}


@pytest.fixture(scope="module")
def reference(weights, tmp_path_factory) -> dict[str, tuple[str, float | None]]:
    """The outcomes of an undisturbed search of the same configuration."""
    d = tmp_path_factory.mktemp("reference")
    result = search(_config(weights, d))
    assert result.state == "COMPLETE" and result.evaluations == BUDGET
    return _outcomes(_rows(str(_config(weights, d).store), result.run_id)[1])


class _Payload:
    """A pickle that creates ``marker`` when unpickled by a loader that runs globals (``weights_only=False``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _poison(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _logged(name: str = "automc.search"):
    handler, logger = _Records(), logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _tmpfs(directory: Path, size: str):
    """A real tmpfs of ``size`` mounted on ``directory`` (skips the test where mounting is not allowed)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system with one file (remove it to free the space)."""
    filler = directory / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(chunk))
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free < 1 << 12
    return filler


# -- 5: poisoned cache entries --------------------------------------------------------------------------------

def test_the_payload_is_live():
    """The poisoned entries below would run code if anything unpickled them freely (so those tests can fail)."""
    marker = Path(f"/tmp/automc-payload-{uuid.uuid4().hex}")
    try:
        pickle.loads(pickle.dumps(_Payload(marker))).close()
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def poisoned(weights, tmp_path_factory):
    """A search whose every cached model is replaced by a pickle payload after each step."""
    d = tmp_path_factory.mktemp("poisoned")
    marker = d / "PAYLOAD-RAN"
    cfg = _config(weights, d, out=str(d / "out"))
    cache = Path(cfg.cache_dir) / "cache"
    poisoned: set[Path] = set()

    def poison_all(event) -> None:
        if event.kind == "step":
            for p in cache.glob("*.pt"):
                if p not in poisoned:  # each entry once, so that each is dropped (and logged) at most once
                    _poison(p, marker)
                    poisoned.add(p)

    with _logged() as logs:
        result = search(cfg, progress=poison_all)
    return cfg, result, marker, poisoned, list(logs)


def test_poisoned_entries_are_rebuilt_never_run_and_logged_once(poisoned, reference):
    cfg, result, marker, paths, logs = poisoned
    assert not marker.exists()
    assert result.state == "COMPLETE" and result.evaluations == BUDGET
    _, rows = _rows(cfg.store, result.run_id)
    # every step as in the undisturbed run: the parents were rebuilt by replaying their steps, nothing FAILed
    assert _outcomes(rows) == reference
    assert not [r for r in rows if "prefix cannot be built" in str(r["error"] or "")]
    dropped = [r for r in logs if "does not load" in r.getMessage()]
    assert dropped, "a poisoned parent was loaded (a scheme of two steps extends a poisoned one)"
    named = [next(str(p) for p in paths if str(p) in r.getMessage()) for r in dropped]
    assert len(named) == len(set(named))  # once per entry


def test_resume_of_a_complete_run_with_poisoned_entries(poisoned):
    cfg, result, marker, _, _ = poisoned
    out = Path(cfg.out)
    shutil.rmtree(out / "model")
    best = max(result.front, key=lambda r: (r["val_accuracy"] or 0.0, r["pr"] or 0.0))
    key = scheme_key(best["scheme"])
    cache = Path(cfg.cache_dir) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for k in range(1, len(key) + 1):  # the exported model and all its parents
        _poison(cache / f"{scheme_id(key[:k])}.pt", marker)
    with _logged() as logs:
        again = search(SearchConfig(resume=result.run_id, store=cfg.store))
    assert again.state == "COMPLETE" and again.evaluations == BUDGET
    assert not marker.exists()
    assert any("does not load" in r.getMessage() for r in logs)
    with open_store(cfg.store) as s:
        assert s.load_run(result.run_id).state == "COMPLETE"
    model = load_compressed(out / "model")
    assert sum(p.numel() for p in model.parameters()) == best["params"]


# -- 6: the cache deleted while a search runs -----------------------------------------------------------------

def test_cache_folder_deleted_between_steps(weights, tmp_path, reference):
    cfg = _config(weights, tmp_path)
    cache = Path(cfg.cache_dir) / "cache"
    deleted = []

    def delete(event) -> None:
        if event.kind == "step" and cache.exists():
            shutil.rmtree(cache)
            deleted.append(event.done)

    result = search(cfg, progress=delete)
    assert len(deleted) >= BUDGET - 1
    assert result.state == "COMPLETE" and result.evaluations == BUDGET and result.failed == reference_failed(reference)
    _, rows = _rows(cfg.store, result.run_id)
    assert _outcomes(rows) == reference  # never blamed on a method
    assert all(r["state"] != "RUNNING" for r in rows)


def reference_failed(reference) -> int:
    return sum(state == State.FAILED for state, _ in reference.values())


# -- 7: a full disk under the tool's own files ----------------------------------------------------------------

def test_cache_put_on_a_full_disk_is_one_disk_error(tmp_path):
    with _tmpfs(tmp_path / "mnt", "1m") as mnt:
        cache = ModelCache(mnt / "cache", base_builder=lambda: torch.nn.Linear(64, 64))
        model = torch.nn.Linear(64, 64)
        cache.put(("a",), model)
        filler = _fill(mnt)
        with pytest.raises(DiskError) as e:
            cache.put(("b",), model)
        assert e.value.errno == errno.ENOSPC and e.value.path == str(cache.path(("b",)))
        assert str(e.value).startswith(f"no space left on {mnt} (") and "writing" in str(e.value)
        with pytest.raises(DiskError):
            cache.put_failure(("c",), "a reason")
        assert not list((mnt / "cache").glob(".tmp-*"))  # nothing half-written stays
        assert cache.get(("a",)) is not None and cache.get(("b",)) is None
        filler.unlink()
        cache.put(("b",), model)
        assert cache.get(("b",)) is not None


def test_store_write_on_a_full_disk_is_a_disk_error_and_the_process_survives(tmp_path):
    """LadybugDB throws from a destructor (std::terminate) when it closes a store whose log write failed for lack
    of space; the store is one ``StoreDiskError`` and the process lives on (a real subprocess)."""
    with _tmpfs(tmp_path / "mnt", "4m") as mnt:
        store = f"ladybug://{mnt / 'kb'}"
        with open_store(store):
            pass
        filler = _fill(mnt)
        code = (
            "import sys\n"
            "from automc.errors import StoreDiskError\n"
            "from automc.kb import open_store\n"
            "from automc.kb.records import GraphBatch\n"
            "b = GraphBatch(); b.node('SearchRun', id='r1', algorithm='x', state='RUNNING')\n"
            "try:\n"
            f"    with open_store({store!r}) as s:\n"
            "        s.write(b)\n"
            "except StoreDiskError as e:\n"
            "    print(e)\n"
            "    sys.exit(3)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 3, out.stderr  # not 134 (SIGABRT)
        assert out.stdout.startswith(f"no space left on {mnt} (") and str(mnt / "kb") in out.stdout
        filler.unlink()
        with open_store(store) as s:  # the store opens and takes writes again; the failed write is not in it
            assert s.query("MATCH (r:SearchRun) RETURN r.id AS id") == []
            b = GraphBatch()
            b.node("SearchRun", id="r2", algorithm="x", state="RUNNING")
            s.write(b)
        with open_store(store) as s:
            assert s.query("MATCH (r:SearchRun) RETURN r.id AS id") == [{"id": "r2"}]


def _search_until_disk_full(args: list[str], cache: Path, fill: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``automc search`` in a real process; fill ``fill``'s file system once two steps are cached."""
    exe = automc_exe()
    assert exe, "the automc console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([exe, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a guard for a stuck machine, not a timing assertion
    try:
        while len(list(cache.glob("*.pt"))) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "two steps were not cached in 10 minutes"
            time.sleep(0.05)
        filler = _fill(fill)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), filler


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr and "terminate called" not in out.stderr, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr
    return errors[0]


def _resume_finishes(run_id: str, store: str) -> list[dict]:
    out = subprocess.run([automc_exe(), "search", "--resume", run_id, "--store", store, "--json"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["evaluations"] == BUDGET
    _, rows = _rows(store, run_id)
    with open_store(store) as s:
        assert s.load_run(run_id).state == "COMPLETE"
    counted = search_rows(rows)
    assert len(counted) == BUDGET
    assert len({r["scheme"] for r in counted}) == BUDGET  # no scheme evaluated twice
    assert all(r["state"] != "RUNNING" for r in rows)
    blamed = [r for r in counted if r["state"] == State.FAILED and any(
        w in str(r["error"] or "").lower() for w in ("space", "disk", "enforce fail", "ioexception", "io exception"))]
    assert not blamed, blamed
    return rows


@pytest.mark.slow
def test_cache_disk_fills_mid_run_then_resume(weights, tmp_path):
    store = f"ladybug://{tmp_path / 'kb'}"
    with _tmpfs(tmp_path / "mnt", "16m") as mnt:
        out, filler = _search_until_disk_full(_cli_args(weights, store, mnt / "run"), mnt / "run" / "cache", mnt)
        assert out.returncode == 1
        line = _one_error_line(out)
        run_id, rows = _rows(store)
        assert line.startswith(f"error: no space left on {mnt} (") and " free) writing " in line
        assert f"writing {mnt / 'run' / 'cache'}/" in line
        assert line.endswith(f"free space and resume with: automc search --resume {run_id} --store {store}")
        with open_store(store) as s:
            assert s.load_run(run_id).state == "INTERRUPTED"
        assert all(r["state"] != "RUNNING" for r in rows)
        cut = [r for r in rows if "no space left" in str(r["error"])]
        # the step in flight: INTERRUPTED (evaluated again on resume), never FAILED
        assert cut and all(r["state"] == State.INTERRUPTED for r in cut)
        filler.unlink()
        _resume_finishes(run_id, store)


@pytest.mark.slow
def test_store_disk_fills_mid_run_then_resume(weights, tmp_path):
    with _tmpfs(tmp_path / "mnt", "16m") as mnt:
        store = f"ladybug://{mnt / 'kb'}"
        cache = tmp_path / "run"
        out, filler = _search_until_disk_full(_cli_args(weights, store, cache), cache / "cache", mnt)
        assert out.returncode == 1  # not 134: the engine's abort on close is avoided
        line = _one_error_line(out)
        assert line.startswith(f"error: no space left on {mnt} (") and f" writing {mnt / 'kb'}" in line
        assert "free space and resume with: automc search --resume " in line
        filler.unlink()
        run_id = line.split("--resume ", 1)[1].split()[0]
        rows = _resume_finishes(run_id, store)
        # the store kept its records as they were; the step that was RUNNING is cut short ("stale") on resume
        stale = [r for r in rows if "stale" in str(r["error"])]
        assert stale and all(r["state"] == State.INTERRUPTED for r in stale)


def test_disk_error_is_one_line_naming_path_and_free_space():
    e = StoreDiskError("/mnt/x/kb.wal", free=12 * 1024, errno=errno.ENOSPC, mount="/mnt/x")
    assert str(e) == "no space left on /mnt/x (12 KiB free) writing /mnt/x/kb.wal"
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is StoreDiskError and str(again) == str(e)


def test_evaluator_lets_a_cache_disk_error_through(data, space, tmp_path):
    """A full cache disk is never a step's failure ("its prefix cannot be built", a .fail marker): it propagates
    from ``Evaluator.evaluate``, ``prepare`` and ``absorb``."""
    from automc.compress.base import Task, TrainBudget
    from automc.compress.models import build_model
    from automc.search.evaluator import Evaluator
    from automc.search.step import execute

    torch.manual_seed(0)
    base = build_model("resnet8", data.num_classes, width=4)
    task = Task(data, 0.4, TrainBudget(epochs=0.2, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    a, b = space.parse("NS(target_ratio_factor=0.5) > NS(target_ratio_factor=0.5)")
    with _tmpfs(tmp_path / "mnt", "4m") as mnt:
        ev = Evaluator(base, task, cache_dir=mnt / "cache", space=space)
        filler = _fill(mnt)
        with pytest.raises(DiskError):
            ev.evaluate((a,))  # the child's entry
        with pytest.raises(DiskError):
            ev.evaluate((a, b))  # the parent's entry, written while replaying it
        with pytest.raises(DiskError):
            ev.prepare((a, b))
        job = ev.prepare((a,))  # its parent is the base model: nothing to write yet
        outcome = execute(job, ev.context(portable=False))
        assert outcome.result.ok
        with pytest.raises(DiskError):
            ev.absorb(outcome)
        assert not list((mnt / "cache").glob("*.fail"))  # nothing remembered as failed
        filler.unlink()
        assert ev.evaluate((a, b)).ok


def test_hostile_entries_and_markers_read_as_missing(tmp_path):
    """A folder, a truncated file or a pickle in an entry's place and a foreign ``.fail`` marker: absent, logged
    once each, and the entry is written again."""
    cache = ModelCache(tmp_path / "cache", base_builder=lambda: torch.nn.Linear(4, 4))
    model = torch.nn.Linear(4, 4)
    marker = tmp_path / "PAYLOAD-RAN"
    (cache.path(("dir",)) / "inner").mkdir(parents=True)
    cache.put(("cut",), model)
    cache.path(("cut",)).write_bytes(cache.path(("cut",)).read_bytes()[:100])
    _poison(cache.path(("pickle",)), marker)
    (cache.directory / f"{scheme_id(('x',))}.fail").write_text("[1, 2]")
    (cache.directory / f"{scheme_id(('y',))}.fail").write_bytes(b"\xff\xfe")
    with _logged() as logs:
        for key in (("dir",), ("cut",), ("pickle",)):
            assert cache.get(key) is None
            assert cache.get(key) is None  # the second read finds nothing: no second log line
    assert sorted(r.getMessage().split()[3] for r in logs) == sorted(
        str(cache.path(k)) for k in (("dir",), ("cut",), ("pickle",)))
    assert not marker.exists()
    assert cache.failure(("x",)) is None and cache.failure(("y",)) is None
    for key in (("dir",), ("cut",), ("pickle",)):
        cache.put(key, model)
        assert cache.get(key) is not None


def test_out_disk_full_at_the_report_then_resume(weights, tmp_path):
    """A full disk under ``--out`` while the report and the model are written: INTERRUPTED, one error naming the
    output disk and the resume command; resume writes them."""
    with _tmpfs(tmp_path / "mnt", "2m") as mnt:
        cfg = _config(weights, tmp_path, out=str(mnt / "out"))
        fillers: list[Path] = []

        def fill_at_the_end(event) -> None:
            if event.kind == "round" and event.done >= BUDGET and not fillers:
                fillers.append(_fill(mnt))

        with pytest.raises(DiskError) as e:
            search(cfg, progress=fill_at_the_end)
        assert fillers, "the search ended before its last round"
        with open_store(cfg.store) as s:
            (run,) = s.list_runs()
            assert s.load_run(run["id"]).state == "INTERRUPTED"
        text = str(e.value)
        assert "\n" not in text and text.startswith(f"no space left on {mnt} (") and f"writing {mnt}" in text
        assert text.endswith(f"free space and resume with: automc search --resume {run['id']} --store {cfg.store}")
        fillers[0].unlink()
        again = search(SearchConfig(resume=run["id"], store=cfg.store))
        assert again.state == "COMPLETE" and again.evaluations == BUDGET
        assert (mnt / "out" / "report.md").stat().st_size > 0
        load_compressed(mnt / "out" / "model")


def test_cache_on_a_read_only_disk_is_one_disk_error(tmp_path):
    with _tmpfs(tmp_path / "mnt", "1m") as mnt:
        cache = ModelCache(mnt / "cache", base_builder=lambda: torch.nn.Linear(4, 4))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(DiskError) as e:
            cache.put(("a",), torch.nn.Linear(4, 4))
        assert e.value.errno == errno.EROFS
        assert str(e.value).startswith(f"read-only file system on {mnt} (") and str(cache.path(("a",))) in str(e.value)
        with pytest.raises(DiskError):
            ModelCache(mnt / "other")
