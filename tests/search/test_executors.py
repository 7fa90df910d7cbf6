"""The executors: jobs through ``SerialExecutor`` and ``RayExecutor`` (``submit``/``wait``) give
``Evaluator.evaluate``'s results; jobs and contexts are plain data; a killed worker costs one retry, then a FAILED
step; ``cancel`` (Ctrl-C) stops what still runs. The round around them: ``test_optimize.py``."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from automc.compress import METHODS
from automc.compress.base import Task, TrainBudget
from automc.compress.lfb import LFB
from automc.compress.models import build_model
from automc.compress.ns import NetworkSlimming
from automc.compress.sfp import SoftFilterPruning
from automc.compress.train import finetune
from automc.kb.states import State
from automc.search.evaluator import PREFIX_FAILED, Evaluator
from automc.search.executors import RayExecutor, SerialExecutor, make_executor
from automc.search.step import EvalResult, StepJob, execute, step_seed

torch.set_num_threads(1)
ANNOUNCE = "AUTOMC_TEST_ANNOUNCE"  # a directory: each step writes "<seed>.<pid>" there and waits on "<seed>.hold"


def announce(task: Task) -> None:
    """Tell the test which process runs the step of this seed, and wait while the test holds it."""
    d = os.environ.get(ANNOUNCE)
    if not d:
        return
    Path(d, f"{task.seed}.{os.getpid()}").touch()
    deadline = time.monotonic() + 600  # the test removes the hold file; this only bounds a test gone wrong
    while Path(d, f"{task.seed}.hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class AnnouncingNS(NetworkSlimming):
    """The real Network Slimming, announcing its process first."""

    def compress(self, model, task, params, ratio):
        announce(task)
        return super().compress(model, task, params, ratio)


class AnnouncingSFP(SoftFilterPruning):
    def compress(self, model, task, params, ratio):
        announce(task)
        return super().compress(model, task, params, ratio)


class AnnouncingLFB(LFB):
    def compress(self, model, task, params, ratio):
        announce(task)
        return super().compress(model, task, params, ratio)


ANNOUNCING = {**METHODS, "NS": AnnouncingNS, "SFP": AnnouncingSFP, "LFB": AnnouncingLFB}
SCHEMES = ("NS(target_ratio_factor=0.5)", "SFP(target_ratio_factor=0.5)", "LMA(target_ratio_factor=0.5)",
           "NS(target_ratio_factor=0.5) > LFB")


@pytest.fixture(scope="module")
def base(data):
    torch.manual_seed(0)
    model = build_model("resnet8", data.num_classes, width=4)
    finetune(model, Task(data, 0.4, TrainBudget(epochs=6, batch_size=32, lr=0.05)), 6)
    return model


@pytest.fixture(scope="module")
def task(data):
    return Task(data, 0.4, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)


def evaluator(base, task, space, directory, **kw):
    kw.setdefault("methods", ANNOUNCING)
    return Evaluator(base, task, cache_dir=directory, space=space, **kw)


def same(a: EvalResult, b: EvalResult) -> bool:
    drop = {"seconds": 0.0, "train_seconds": 0.0}
    return dataclasses.replace(a, **drop) == dataclasses.replace(b, **drop)




def run_jobs(ev: Evaluator, keys, executor) -> list[EvalResult]:
    """Prepare, submit and absorb ``keys`` in order, at most ``executor.workers`` in flight (what the loop's
    round does, without its walk); returns the results in the order of ``keys``."""
    pending, results, in_flight = list(keys), {}, 0
    while pending or in_flight:
        while pending and in_flight < executor.workers:
            job = ev.prepare(pending.pop(0))
            if isinstance(job, EvalResult):  # nothing to run: refused or failed before
                results[job.scheme] = job
            else:
                executor.submit(job)
                in_flight += 1
        if in_flight:
            outcome = executor.wait()
            in_flight -= 1
            results[outcome.result.scheme] = ev.absorb(outcome)
    return [results[tuple(k)] for k in keys]


def test_serial_executor_gives_the_evaluators_results(base, task, space, tmp_path):
    keys = [space.parse(t) for t in SCHEMES]
    keys.insert(0, keys[-1][:1])  # the parent of the last scheme first: its child's job starts from its model
    one = evaluator(base, task, space, tmp_path / "one")
    expected = [one.evaluate(k) for k in keys]
    two = evaluator(base, task, space, tmp_path / "two")
    with make_executor(two) as ex:
        assert isinstance(ex, SerialExecutor) and ex.workers == 1
        got = run_jobs(two, keys, ex)
    assert all(r.ok for r in expected)
    assert all(same(g, e) for g, e in zip(got, expected, strict=True))
    assert all(k in two.cache for k in keys)  # children went into the driver's cache, as evaluate puts them


def test_jobs_and_contexts_are_plain_data(base, task, space, tmp_path):
    ev = evaluator(base, task, space, tmp_path)
    parent = space.parse("NS(target_ratio_factor=0.5)")
    assert ev.evaluate(parent).ok
    job = ev.prepare((*parent, space.parse("SFP(target_ratio_factor=0.5)")[0]))
    # A job is tensors, dicts and the frozen strategy, no module; its seed is the step's.
    assert isinstance(job, StepJob) and job.seed == step_seed(0, job.scheme)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in job.parent_state.values())
    assert b"torch.nn" not in pickle.dumps((job.parent_arch, job.strategy, job.parent))
    # What a worker process gets (the job and the run's context, pickled) computes what this process computes.
    ctx = ev.context()
    assert ctx.task.device.type == "cpu" and ctx.task.data.device.type == "cpu"
    here = execute(job, ev.context(portable=False))
    there = execute(pickle.loads(pickle.dumps(job)), pickle.loads(pickle.dumps(ctx)))
    assert here.result.ok and same(there.result, here.result)
    assert there.child_arch == here.child_arch
    assert all(torch.equal(there.child_state[k], v) for k, v in here.child_state.items())
    assert same(ev.absorb(there), ev.evaluate(job.scheme))  # absorbed: evaluate finds it known


def test_failures_match_the_evaluators(base, data, space, tmp_path):
    hard = Task(data, 0.95, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    lfb = space.parse("LFB")
    keys = [lfb, space.parse("NS(target_ratio_factor=0.9) > NS(target_ratio_factor=0.1)"),
            space.parse(" > ".join(["NS(finetune_epochs_factor=0.2)"] * 6))]
    one = evaluator(base, hard, space, tmp_path / "one")
    expected = [one.evaluate(k) for k in keys]
    two = evaluator(base, hard, space, tmp_path / "two")
    got = run_jobs(two, keys, make_executor(two))
    assert [r.state for r in expected] == [State.FAILED] * 3
    assert [g.error for g in got] == [r.error for r in expected]
    assert got[0].error.startswith("CompressionError: LFB can remove at most")
    assert got[1].error.startswith(PREFIX_FAILED) and "CompressionError: cannot remove" in got[1].error
    assert got[2].error.startswith("not allowed: 6 steps")
    assert all(same(g, e) for g, e in zip(got, expected, strict=True))


def test_a_step_that_raises_is_a_failed_outcome(base, data, space, tmp_path):
    hard = Task(data, 0.95, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    ev = evaluator(base, hard, space, tmp_path)
    job = ev.prepare(space.parse("LFB"))
    out = SerialExecutor(ev.context(portable=False))
    out.submit(job)
    outcome = out.wait()
    assert outcome.result.state == State.FAILED and outcome.child_state is None and outcome.measured is None
    assert outcome.result.seed == job.seed and outcome.worker.endswith(f":{os.getpid()}")
    assert ev.absorb(outcome) is outcome.result and ev.cache.failure(job.scheme) == outcome.result.error


# -- Ray (one local instance for the module: starting one costs seconds) ---------------------------------------

@pytest.fixture(scope="module")
def announce_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("announce")


@pytest.fixture(scope="module")
def ray_run(base, task, space, tmp_path_factory, announce_dir):
    """An evaluator and a RayExecutor with two single-thread CPU workers that started their own Ray."""
    pytest.importorskip("ray")
    import ray

    ev = evaluator(base, task, space, tmp_path_factory.mktemp("ray-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ANNOUNCE, str(announce_dir))  # before Ray starts: its workers inherit the environment
        ex = RayExecutor(ev.context(), workers=2, cpus_per_worker=1, threads=1)
    try:
        assert ray.is_initialized()
        yield ev, ex
    finally:
        ex.close()
    assert not ray.is_initialized()


def pids(directory: Path, seed: int) -> list[int]:
    return [int(p.suffix[1:]) for p in directory.glob(f"{seed}.*") if p.suffix[1:].isdigit()]


@pytest.mark.slow
def test_ray_gives_the_serial_results(ray_run, base, task, space, tmp_path):
    ev, ex = ray_run
    keys = [space.parse(t) for t in SCHEMES]
    got = run_jobs(ev, keys, ex)
    serial = evaluator(base, task, space, tmp_path / "serial")
    expected = run_jobs(serial, keys, SerialExecutor(serial.context(portable=False), threads=1))
    assert all(r.ok for r in expected)
    assert all(same(g, e) for g, e in zip(got, expected, strict=True))
    assert all(k in ev.cache for k in keys)


@pytest.mark.slow
def test_a_killed_worker_costs_one_retry_then_a_failed_step(ray_run, space, announce_dir, tmp_path):
    ev, ex = ray_run
    keys = [space.parse(t) for t in ("NS(target_ratio_factor=0.7)", "SFP(target_ratio_factor=0.9)",
                                     "NS(target_ratio_factor=0.3)")]
    assert not any(space.why_not(k) for k in keys)
    once, twice, free = (step_seed(ev.seed, k) for k in keys)
    for seed in (once, twice):
        (announce_dir / f"{seed}.hold").touch()
    killed: list[int] = []
    problems: list[str] = []

    def attempt(seed: int, known: list[int]) -> int:
        deadline = time.monotonic() + 300  # a loaded machine starts Ray workers slowly
        while time.monotonic() < deadline:
            new = [p for p in pids(announce_dir, seed) if p not in known]
            if new:
                return new[0]
            time.sleep(0.05)
        raise TimeoutError(f"no attempt of step {seed} started")

    def killer() -> None:
        try:
            first = attempt(once, [])
            os.kill(first, signal.SIGKILL)  # mid-evaluation: it announced itself and waits on its hold file
            killed.append(first)
            (announce_dir / f"{once}.hold").unlink()  # its retry runs through
            a = attempt(twice, [])
            os.kill(a, signal.SIGKILL)
            b = attempt(twice, [a])
            os.kill(b, signal.SIGKILL)  # the retry dies too: that step is FAILED
            killed.extend([a, b])
        except Exception as e:  # noqa: BLE001 - reported by the test below
            problems.append(repr(e))
        finally:
            (announce_dir / f"{twice}.hold").unlink(missing_ok=True)
            (announce_dir / f"{once}.hold").unlink(missing_ok=True)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    got = run_jobs(ev, keys, ex)
    thread.join(timeout=120)
    assert not problems and len(killed) == 3
    assert got[0].ok and len(pids(announce_dir, once)) == 2  # retried once, on a new worker process
    assert got[1].state == State.FAILED and got[1].error.startswith("worker lost on 2 attempts: ")
    assert len(pids(announce_dir, twice)) == 2 and got[2].ok and len(pids(announce_dir, free)) == 1
    # The retried step computed what an undisturbed one computes.
    serial = evaluator(ev.base_model, ev.task, space, tmp_path / "serial")
    assert same(got[0], serial.evaluate(keys[0]))
    assert not any(p.suffix == ".hold" for p in announce_dir.iterdir())


@pytest.mark.slow
def test_a_failing_step_is_failed_at_once_on_a_worker(ray_run, base, data, space, announce_dir, tmp_path):
    hard = Task(data, 0.95, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    ev = evaluator(base, hard, space, tmp_path / "hard")
    lfb = space.parse("LFB")
    with RayExecutor(ev.context(), workers=2) as ex:  # joins the module's Ray, leaves it up
        (got,) = run_jobs(ev, [lfb], ex)
    assert got.state == State.FAILED and got.error.startswith("CompressionError: LFB can remove at most")
    assert len(pids(announce_dir, step_seed(0, lfb))) == 1  # not retried
    assert same(got, evaluator(base, hard, space, tmp_path / "serial").evaluate(lfb))


@pytest.mark.slow
def test_ctrl_c_cancels_the_running_steps(ray_run, space, announce_dir):
    ev, ex = ray_run
    keys = [space.parse(t) for t in ("NS(target_ratio_factor=0.9)", "SFP(target_ratio_factor=0.1)")]
    assert not any(space.why_not(k) for k in keys)
    seeds = [step_seed(ev.seed, k) for k in keys]
    for seed in seeds:
        (announce_dir / f"{seed}.hold").touch()

    problems: list[str] = []

    def interrupt() -> None:  # Ctrl-C once both steps run (and wait on their hold files)
        deadline = time.monotonic() + 300  # a loaded machine starts Ray workers slowly
        while not all(pids(announce_dir, s) for s in seeds) and time.monotonic() < deadline:
            time.sleep(0.05)
        if all(pids(announce_dir, s) for s in seeds):
            os.kill(os.getpid(), signal.SIGINT)
        else:
            problems.append("the two steps did not both start within 300 s")
            for seed in seeds:
                (announce_dir / f"{seed}.hold").unlink(missing_ok=True)

    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            try:
                run_jobs(ev, keys, ex)
            except BaseException:
                ex.cancel()  # what the loop's round does on any error
                raise
        assert not problems, problems[0]
        running = [p for s in seeds for p in pids(announce_dir, s)]
        assert len(running) == 2
        deadline = time.monotonic() + 30
        while any(alive(p) for p in running) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in running)  # force-cancelled ...
        time.sleep(1)
        assert all(len(pids(announce_dir, s)) == 1 for s in seeds)  # ... and not retried
        assert not any(k in ev.cache for k in keys)
    finally:
        for seed in seeds:
            (announce_dir / f"{seed}.hold").unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
