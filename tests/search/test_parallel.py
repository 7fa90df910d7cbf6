"""Parallel evaluation: batches through the serial and the Ray executor give ``Evaluator.evaluate``'s results; a
killed worker costs one retry, then a FAIL; leaving a batch early cancels what still runs."""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
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
from automc.search._base import History, Observation
from automc.search.evaluator import Evaluator, StepResult, step_seed
from automc.search.parallel import (
    RayExecutor,
    SerialExecutor,
    StepJob,
    WorkerContext,
    evaluate_batch,
    evaluate_round,
    make_executor,
    prepare,
    ready,
    round_plan,
    serial_positions,
)

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


def same(a: StepResult, b: StepResult) -> bool:
    drop = {"seconds": 0.0, "train_seconds": 0.0}
    return dataclasses.replace(a, **drop) == dataclasses.replace(b, **drop)


def test_serial_batch_gives_the_evaluators_results(base, task, space, tmp_path):
    keys = [space.parse(t) for t in SCHEMES]
    keys.insert(0, keys[-1][:1])  # the parent of the last scheme, in the same batch: it runs first
    one = evaluator(base, task, space, tmp_path / "one")
    expected = [one.evaluate(k) for k in keys]
    two = evaluator(base, task, space, tmp_path / "two")
    with make_executor(two) as ex:
        assert isinstance(ex, SerialExecutor)
        order = list(evaluate_batch(two, keys, ex))
    got = dict(order)
    assert sorted(got) == list(range(len(keys)))
    assert order.index((0, got[0])) < order.index((len(keys) - 1, got[len(keys) - 1]))
    assert all(r.ok for r in expected)
    assert all(same(got[i], expected[i]) for i in range(len(keys)))
    assert all(k in two.cache for k in keys)  # children went into the driver's cache, as evaluate puts them
    # A job is plain data: tensors, dicts and the frozen strategy, no module.
    job = prepare(two, (*keys[-1], space.parse("NS")[0]))
    assert isinstance(job, StepJob) and job.seed == step_seed(0, job.scheme)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in job.parent_state.values())
    assert b"torch.nn" not in pickle.dumps((job.parent_arch, job.strategy, job.parent))


def test_failures_match_the_evaluators(base, data, space, tmp_path):
    hard = Task(data, 0.95, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    lfb = space.parse("LFB")
    keys = [lfb, (*lfb, space.parse("NS")[0]), space.parse(" > ".join(["NS(finetune_epochs_factor=0.2)"] * 6))]
    one = evaluator(base, hard, space, tmp_path / "one")
    expected = [one.evaluate(k) for k in keys]
    two = evaluator(base, hard, space, tmp_path / "two")
    got = dict(evaluate_batch(two, keys, make_executor(two)))
    assert [r.state for r in expected] == ["FAIL"] * 3
    assert [got[i].error for i in range(3)] == [r.error for r in expected]
    assert got[1].error.startswith("its prefix cannot be built: StepFailed") and "CompressionError" in got[1].error
    assert all(same(got[i], expected[i]) for i in range(3))


def serial_round(proposals, fails, history, budget):
    """The serial search loop's round (``run._round``): each proposal's missing prefixes in order, a FAIL ends
    the proposal, the budget is checked before each step."""
    done = []
    for scheme in proposals:
        for k in range(1, len(scheme) + 1):
            prefix = scheme[:k]
            seen = history.get(prefix)
            if seen is not None:
                if not seen.ok:
                    break
                continue
            if len(done) >= budget:
                return done
            history.add(Observation(prefix, "FAIL" if prefix in fails else "COMPLETE"))
            done.append(prefix)
            if prefix in fails:
                break
    return done


def planned_round(proposals, fails, history, budget):
    """The same round in waves: run every ready step of the plan side by side, plan again."""
    done = []
    while batch := ready(round_plan(proposals, history, budget - len(done)), history):
        for prefix in batch:
            history.add(Observation(prefix, "FAIL" if prefix in fails else "COMPLETE"))
        done += batch
    return done


def test_a_round_in_waves_evaluates_what_the_serial_round_does():
    rng = random.Random(0)
    for _ in range(300):
        def scheme():
            return tuple(rng.choice("abc") for _ in range(rng.randint(1, 3)))
        known = {scheme() for _ in range(rng.randint(0, 4))}
        proposals = [scheme() for _ in range(rng.randint(1, 6))]
        fails = {s for s in {p[:k] for p in proposals + list(known) for k in range(1, len(p) + 1)}
                 if rng.random() < 0.3}
        budget = rng.randint(1, 8)
        histories = []
        for _ in range(2):
            h = History(Observation((), "COMPLETE"))
            for s in sorted(known, key=len):  # a history holds a scheme's prefixes before it
                if all(h.get(s[:k]) is not None and h.get(s[:k]).ok for k in range(len(s))):
                    h.add(Observation(s, "FAIL" if s in fails else "COMPLETE"))
            histories.append(h)
        serial = serial_round(proposals, fails, histories[0], budget)
        waves = planned_round(proposals, fails, histories[1], budget)
        assert sorted(serial) == sorted(waves) and len(waves) == len(set(waves)) <= budget
        # the serial order follows from the proposals alone: what a parallel round stamps each step with as it
        # arrives, so that any part of the round in the store reads back in the serial order
        assert sorted(waves, key=serial_positions(proposals).__getitem__) == serial


def test_evaluate_round_matches_the_serial_loop(base, task, space, tmp_path):
    proposals = [space.parse(t) for t in ("NS(target_ratio_factor=0.5) > LFB", "SFP(target_ratio_factor=0.5)",
                                          "NS(target_ratio_factor=0.5)", "LMA(target_ratio_factor=0.5)")]
    one = evaluator(base, task, space, tmp_path / "one")
    h1 = History(one.base().observation(-1, "base"))
    serial = serial_round(proposals, set(), History(Observation((), "COMPLETE")), 3)
    expected = []
    for scheme in serial:
        r = one.evaluate(scheme)
        h1.add(r.observation(0, f"id-{len(expected)}"))
        expected.append(r)
    two = evaluator(base, task, space, tmp_path / "two")
    h2 = History(two.base().observation(-1, "base"))
    calls: list[tuple[str, object]] = []

    def started(scheme):
        calls.append(("started", scheme))
        return f"id-{len(calls) - 1}"

    def finished(result, token):
        calls.append(("finished", token))
        return result.observation(0, token)

    new = evaluate_round(two, SerialExecutor(WorkerContext.from_evaluator(two)), proposals, h2, 3,
                         started=started, finished=finished)
    assert [o.scheme for o in new] == [o.scheme for o in h1] == serial  # the serial order, budget 3 of 4 steps
    assert [o.scheme for o in h2] == serial and all(o.ok for o in new)
    begun = [k for kind, k in calls if kind == "started"]  # in waves: (a,) and (b,) before (a, c)
    assert sorted(begun) == sorted(serial) and all(begun.index(k[:-1]) < begun.index(k) for k in begun if k[:-1])
    assert sorted(o.evaluation_id for o in new) == sorted(t for kind, t in calls if kind == "finished")
    assert [dataclasses.replace(o, evaluation_id="") for o in new] == [dataclasses.replace(o, evaluation_id="")
                                                                         for o in h1]


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
        ex = RayExecutor(WorkerContext.from_evaluator(ev), workers=2, cpus_per_worker=1, threads=1)
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
    got = dict(evaluate_batch(ev, keys, ex))
    serial = evaluator(base, task, space, tmp_path / "serial")
    expected = dict(evaluate_batch(serial, keys, SerialExecutor(WorkerContext.from_evaluator(serial), threads=1)))
    assert all(expected[i].ok for i in range(len(keys)))
    assert all(same(got[i], expected[i]) for i in range(len(keys)))
    assert all(k in ev.cache for k in keys)


@pytest.mark.slow
def test_a_killed_worker_costs_one_retry_then_a_fail(ray_run, space, announce_dir, tmp_path):
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
            os.kill(b, signal.SIGKILL)  # the retry dies too: that step is a FAIL
            killed.extend([a, b])
        except Exception as e:  # noqa: BLE001 - reported by the test below
            problems.append(repr(e))
        finally:
            (announce_dir / f"{twice}.hold").unlink(missing_ok=True)
            (announce_dir / f"{once}.hold").unlink(missing_ok=True)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    got = dict(evaluate_batch(ev, keys, ex))
    thread.join(timeout=120)
    assert not problems and len(killed) == 3
    assert got[0].ok and len(pids(announce_dir, once)) == 2  # retried once, on a new worker process
    assert got[1].state == "FAIL" and got[1].error.startswith("worker lost on 2 attempts: ")
    assert len(pids(announce_dir, twice)) == 2 and got[2].ok and len(pids(announce_dir, free)) == 1
    # The retried step computed what an undisturbed one computes.
    serial = evaluator(ev.base_model, ev.task, space, tmp_path / "serial")
    assert same(got[0], serial.evaluate(keys[0]))
    assert not any(p.suffix == ".hold" for p in announce_dir.iterdir())


@pytest.mark.slow
def test_a_failing_step_is_a_fail_at_once_on_a_worker(ray_run, base, data, space, announce_dir, tmp_path):
    hard = Task(data, 0.95, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    ev = evaluator(base, hard, space, tmp_path / "hard")
    lfb = space.parse("LFB")
    with RayExecutor(WorkerContext.from_evaluator(ev), workers=2) as ex:  # joins the module's Ray, leaves it up
        (_, got), = evaluate_batch(ev, [lfb], ex)
    assert got.state == "FAIL" and got.error.startswith("CompressionError: LFB can remove at most")
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
            list(evaluate_batch(ev, keys, ex))
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
