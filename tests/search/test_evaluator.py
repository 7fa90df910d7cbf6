"""The evaluator: parent caching and replay, FAILED results, determinism, no test data for strategies (the model
cache itself: ``test_cache.py``)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import ClassVar

import pytest
import torch

from automc.compress import METHODS
from automc.compress._common import resolve_params
from automc.compress.base import Task, TrainBudget
from automc.compress.data import synthetic
from automc.compress.ns import NetworkSlimming
from automc.compress.scheme import apply_step
from automc.compress.train import predict, steps_for
from automc.errors import ValidationError
from automc.kb.schema import NODE
from automc.kb.states import State
from automc.search._base import Observation
from automc.search.evaluator import Evaluator
from automc.search.step import EvalResult, execute, step_seed

torch.set_num_threads(1)


class CountingNS(NetworkSlimming):
    """The real Network Slimming, counting its calls."""

    calls: ClassVar[list[float]] = []

    def compress(self, model, task, params, ratio):
        CountingNS.calls.append(ratio)
        return super().compress(model, task, params, ratio)


METHODS_COUNTED = {**METHODS, "NS": CountingNS}


def make(base, task, space, tmp_path, name="cache", **kw):
    kw.setdefault("methods", METHODS_COUNTED)
    return Evaluator(base, task, cache_dir=tmp_path / name, space=space, **kw)


def same(a: EvalResult, b: EvalResult) -> bool:
    drop = {"seconds": 0.0, "train_seconds": 0.0}
    return dataclasses.replace(a, **drop) == dataclasses.replace(b, **drop)


def outputs(model, data):
    return predict(model, data, "test", device="cpu")


def test_step_seed_depends_on_run_seed_and_scheme():
    assert step_seed(0, ("a", "b")) == step_seed(0, ("a", "b"))
    assert len({step_seed(0, ("a", "b")), step_seed(1, ("a", "b")), step_seed(0, ("b", "a")),
                step_seed(0, ("a",))}) == 4
    assert 0 <= step_seed(123, ("x",)) < 2**31


def test_extension_applies_only_the_last_step(base, task, space, tmp_path):
    ev = make(base, task, space, tmp_path)
    a, b = space.parse("NS(target_ratio_factor=0.5) > NS(target_ratio_factor=0.5)")
    CountingNS.calls.clear()
    first = ev.evaluate((a,))
    assert first.ok and len(CountingNS.calls) == 1
    second = ev.evaluate((a, b))
    assert second.ok and len(CountingNS.calls) == 2  # (a,) came from the cache, not from a second NS run
    assert second.pr == pytest.approx(0.4, abs=0.03) and first.pr == pytest.approx(0.2, abs=0.03)
    assert second.step_pr == pytest.approx(1 - second.params / first.params)
    assert second.step_ar == pytest.approx((second.val_accuracy - first.val_accuracy) / first.val_accuracy)
    b0 = ev.base()
    assert b0.scheme == () and b0.pr == 0 and b0.params > first.params > second.params
    assert second.test_accuracy is None and second.ar is None and b0.test_accuracy is not None  # final models only
    assert second.fr > 0 and second.train_seconds <= second.seconds and second.fidelity == "search"
    assert second.val_low <= second.val_accuracy <= second.val_high


def test_eviction_and_replay_give_the_uncached_model(base, task, space, tmp_path):
    key = space.parse("NS(target_ratio_factor=0.5) > LFB")
    cached = make(base, task, space, tmp_path, "a")
    r1 = cached.evaluate(key[:1])
    r2 = cached.evaluate(key)
    # A cache that keeps one entry at a time: (a,) is evicted when (a, b) is written, so model() replays it.
    tiny = make(base, task, space, tmp_path, "b", cache_bytes=1)
    CountingNS.calls.clear()
    r2_replayed = tiny.evaluate(key)  # the parent (a,) was never evaluated here: replayed first
    assert len(CountingNS.calls) == 1 and same(r2, r2_replayed)
    assert key[:1] not in tiny.cache and key in tiny.cache
    assert torch.equal(outputs(cached.model(key), task.data), outputs(tiny.model(key), task.data))
    assert torch.equal(outputs(cached.model(key[:1]), task.data), outputs(tiny.model(key[:1]), task.data))
    assert r1.ok
    # Without any cache: the pure step on the base model (its own teacher) gives the same child as the cached path.
    child, _ = apply_step(base, space.strategy(key[0]), dataclasses.replace(task, teacher=base),
                          params_original=cached.base().params,
                          seed=step_seed(0, key[:1]), methods=METHODS)
    assert torch.equal(outputs(child, task.data), outputs(cached.model(key[:1]), task.data))


def test_deterministic_for_a_seed_and_independent_of_order(base, task, space, tmp_path):
    keys = [space.parse(t) for t in ("SFP(target_ratio_factor=0.5)",
                                     "SFP(target_ratio_factor=0.5) > NS(target_ratio_factor=0.5)",
                                     "LMA(target_ratio_factor=0.5)")]
    one = make(base, task, space, tmp_path, "one")
    two = make(base, task, space, tmp_path, "two")
    r_one = [one.evaluate(k) for k in keys]
    r_two = [two.evaluate(k) for k in reversed(keys)][::-1]
    assert all(same(x, y) for x, y in zip(r_one, r_two, strict=True))
    assert all(r.ok and r.seed == step_seed(0, r.scheme) for r in r_one)
    other = make(base, task, space, tmp_path, "other", seed=1).evaluate(keys[1])
    assert other.seed != r_one[1].seed


def test_impossible_steps_fail_with_a_reason(base, data, space, tmp_path):
    hard = Task(data, 0.95, TrainBudget(epochs=1, batch_size=32, lr=0.05), seed=0)
    ev = make(base, hard, space, tmp_path)
    lfb = space.parse("LFB")
    r = ev.evaluate(lfb)
    assert r.state == State.FAILED and r.error.startswith("CompressionError: LFB can remove at most")
    assert r.params is None and r.val_accuracy is None and not r.ok
    assert lfb not in ev.cache and ev.cache.failure(lfb) == r.error
    assert same(ev.evaluate(lfb), r)  # remembered: never retried
    ns9 = space.parse("NS(target_ratio_factor=0.9)")  # 0.855 of the parameters: more than block-internal channels
    child = ev.evaluate((*ns9, space.parse("NS(target_ratio_factor=0.1)")[0]))
    assert child.state == State.FAILED and "prefix cannot be built" in child.error and "cannot remove" in child.error
    too_long = space.parse(" > ".join(["NS(finetune_epochs_factor=0.2)"] * 6))
    assert "not allowed: 6 steps" in ev.evaluate(too_long).error
    no_impl = make(base, hard, space, tmp_path, "x", methods={"NS": NetworkSlimming})
    assert no_impl.evaluate(space.parse("SFP")).error.startswith("NotFoundError: no implementation")


def test_observation_and_record_keep_test_accuracy_apart(base, task, space, tmp_path):
    r = make(base, task, space, tmp_path).evaluate(space.parse("NS(target_ratio_factor=0.5)"))
    obs = r.observation(3, "ev-1")
    assert isinstance(obs, Observation)
    names = {f.name for f in dataclasses.fields(Observation)}
    assert not any("test" in n for n in names) and "accuracy" not in names
    assert no_test_value(obs, r)
    assert (obs.round, obs.evaluation_id, obs.val_accuracy, obs.pr, obs.params) == (3, "ev-1", r.val_accuracy,
                                                                                   r.pr, r.params)
    rec = r.record()
    props = {name for name, _ in NODE["Evaluation"].properties}
    assert set(rec) <= props
    assert rec["accuracy"] is None and rec["val_accuracy"] == r.val_accuracy
    assert rec["steps"].startswith('["NS(') and rec["fidelity"] == "search" and rec["state"] == "COMPLETE"


def no_test_value(obs: Observation, r: EvalResult) -> bool:
    """The test accuracy is nowhere in the observation (unless it equals the validation accuracy)."""
    values = dataclasses.astuple(obs)
    return r.test_accuracy == r.val_accuracy or r.test_accuracy not in values


_TEST_FIELDS = ("accuracy", "accuracy_low", "accuracy_high", "ar", "test_correct_bits", "test_ids_hash")


def test_final_replays_the_whole_scheme_at_another_fidelity(base, task, space, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    ev = make(base, task, space, tmp_path)
    key = space.parse("NS(target_ratio_factor=0.5) > SFP")
    search = ev.evaluate(key)
    # a total of cap x the search's epochs gives each step the search's own budget; the rest is the polish, whose
    # optimiser is the last one made: its first step starts from the re-applied scheme's model
    total = space.rules.max_epochs_factor_sum * task.budget.epochs
    starts: list[tuple[object, list[torch.Tensor]]] = []  # each optimiser (kept alive) and its first weights

    def first_weights(opt, _args, _kwargs) -> None:  # a pre-hook's return value would replace the step's arguments
        if not starts or starts[-1][0] is not opt:
            starts.append((opt, [p.detach().clone() for g in opt.param_groups for p in g["params"]]))

    handle = register_optimizer_step_pre_hook(first_weights)
    try:
        again, model = ev.final(key, dataclasses.replace(task, budget=dataclasses.replace(task.budget, epochs=total)))
    finally:
        handle.remove()
    assert again.fidelity == "final" and again.test_accuracy is not None and search.test_accuracy is None
    assert again.ok and again.epochs == total and ev.final_split(key, total).polish > 0
    replayed = starts[-1][1]
    assert all(torch.equal(a, b) for a, b in zip(replayed, ev.model(key).parameters(), strict=True))
    assert again.params == search.params == sum(p.numel() for p in model.parameters())
    longer = dataclasses.replace(task, budget=TrainBudget(epochs=2, batch_size=32, lr=0.05))
    final, model = ev.final(key, longer, data_fraction=1.0)
    assert final.ok and final.epochs == 2.0 and final.params == sum(p.numel() for p in model.parameters())


def ns_distilling_steps(strategy, task) -> int:
    """Teacher forwards of one NS step: one per optimiser step of its sparsity phase and of its final fine-tune."""
    e = task.budget.epochs_for(resolve_params("NS", strategy.params)["finetune_epochs_factor"])
    share = NetworkSlimming.sparsity_share
    return steps_for(task, e * share) + steps_for(task, e * (1 - share))


def forwards_of(model, run):
    """How many times ``model`` itself ran forward during ``run()`` (copies of it carry the hook but do not count),
    and what ``run`` returned."""
    calls = []
    handle = model.register_forward_hook(lambda m, _i, _o: calls.append(m is model))
    try:
        out = run()
    finally:
        handle.remove()
    return sum(calls), out


def test_every_search_step_distils_from_the_base_model(base, task, space, tmp_path):
    key = space.parse("NS(target_ratio_factor=0.5, finetune_epochs_factor=0.4) > "
                      "NS(target_ratio_factor=0.5, finetune_epochs_factor=0.4)")
    one, two = (ns_distilling_steps(space.strategy(k), task) for k in key)
    ev = make(base, task, space, tmp_path)
    assert ev.evaluate(key[:1]).ok
    # step 2 runs on its cached parent, and its teacher is the base model, not that parent
    n, r = forwards_of(base, lambda: ev.evaluate(key))
    assert r.ok and n == two > 0
    # a cache of one entry: the parent is replayed from the base model first, and distils from it too
    tiny = make(base, task, space, tmp_path, "tiny", cache_bytes=1)
    tiny.base()  # the base model's own measurement is not a teacher's forward
    n, r = forwards_of(base, lambda: tiny.evaluate(key))
    assert r.ok and n == one + two
    # the final fine-tune re-applies both steps from the base model with their shares of the total (cap x the
    # search's epochs: the search's own budget), then polishes with the rest, on a task without a teacher of its own
    total = space.rules.max_epochs_factor_sum * task.budget.epochs
    polish = steps_for(task, ev.final_split(key, total).polish)
    final_task = dataclasses.replace(task, budget=dataclasses.replace(task.budget, epochs=total))
    n, (final, _) = forwards_of(base, lambda: ev.final(key, final_task))
    assert final.ok and task.teacher is None and final_task.teacher is None and n == one + two + polish > one + two


def test_a_worker_teaches_with_the_base_model_it_was_sent(base, task, space, tmp_path):
    ev = make(base, task, space, tmp_path)
    key = space.parse("NS(target_ratio_factor=0.5, finetune_epochs_factor=0.4) > "
                      "NS(target_ratio_factor=0.5, finetune_epochs_factor=0.4)")
    assert ev.evaluate(key[:1]).ok
    assert ev.context(portable=False).task.teacher is base
    ctx = pickle.loads(pickle.dumps(ev.context()))  # as Ray sends it: the base model travels once
    assert ctx.task.teacher is ctx.base_model and ctx.base_model is not base
    worker = ctx.on_device()
    assert worker.task.teacher is worker.base_model and not worker.base_model.training
    n, out = forwards_of(worker.base_model, lambda: execute(ev.prepare(key), worker))
    assert out.result.ok and n == ns_distilling_steps(space.strategy(key[1]), task) > 0
    assert same(ev.absorb(out), ev.evaluate(key))


def test_evaluator_pickles_for_workers(base, task, space, tmp_path):
    ev = make(base, task, space, tmp_path, methods=None)
    key = space.parse("SFP(target_ratio_factor=0.5)")
    clone = pickle.loads(pickle.dumps(ev))
    assert same(clone.evaluate(key), ev.evaluate(key))


def test_evaluator_needs_a_validation_split(base, space, tmp_path):
    data = synthetic(num_classes=4, per_class=8, size=16, val_fraction=0.0)
    with pytest.raises(ValidationError, match="no validation split"):
        make(base, Task(data, 0.4), space, tmp_path)
