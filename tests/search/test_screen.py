"""Rung 0 (``--screen``): proposals screened without fine-tuning, the best promoted to the search fidelity."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from automc.catalog import scheme_key
from automc.compress.base import Task, TrainBudget
from automc.compress.compute import FORWARD_ONLY
from automc.compress.models import build_model
from automc.compress.train import finetune
from automc.errors import ValidationError
from automc.kb import open_store
from automc.kb.states import State
from automc.search import search
from automc.search.evaluator import SCREEN_IMAGES, Evaluator
from automc.search.objective import meets
from automc.search.study import open_study
from tests.search.test_study import config, write_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("screen-inputs"))


def test_screening_trains_nothing_and_measures_validation_only(data, space, tmp_path):
    torch.manual_seed(0)
    base = build_model("resnet8", data.num_classes, width=4)
    task = Task(data, 0.4, TrainBudget(epochs=1, batch_size=32, lr=0.05), torch.device("cpu"), seed=0)
    finetune(base, task, 2)
    ev = Evaluator(base, task, cache_dir=tmp_path / "cache", space=space)
    # SFP's own steps train and forward nothing at zero epochs, so the compute is the screen's own
    key = space.parse("SFP(target_ratio_factor=0.5) > SFP(target_ratio_factor=0.5)")
    r = ev.screen(key)
    assert r.ok and r.fidelity == "screen" and r.epochs == 0.0 and r.test_accuracy is None
    assert r.pr == pytest.approx(0.4, abs=0.05) and key not in ev.cache and key[:1] not in ev.cache
    # forward passes only: BatchNorm re-estimation on the training batches, then the validation split
    n_train, batch = data.size("train"), 32
    recal = min(n_train, math.ceil(SCREEN_IMAGES / batch) * batch)
    assert r.compute == pytest.approx(FORWARD_ONLY * (recal + data.size("val")) / n_train)
    assert dataclasses.replace(ev.screen(key), seconds=0.0) == dataclasses.replace(r, seconds=0.0)  # same seeds
    few = ev.screen(key, val_images=16)  # a per-layer strategy's cheaper look: the first 16 validation images
    assert few.compute == pytest.approx(FORWARD_ONLY * (recal + 16) / n_train) and few.pr == r.pr
    assert ev.screen(space.parse("NS(target_ratio_factor=0.5) > LMA(target_ratio_factor=0.5)")).ok
    bad = ev.screen(space.parse("NS(target_ratio_factor=0.5) > NS(target_ratio_factor=0.7)"))
    assert bad.state == State.FAILED and bad.error.startswith("not allowed:")


def test_promotion_keeps_the_best_of_the_rung(inputs, tmp_path):
    cfg = config(inputs, tmp_path, strategy="random", max_steps=4, per_round=2, screen=3)
    result = search(cfg)
    assert result.state == State.COMPLETE
    with open_store(cfg.store) as s:
        rows = s.run_evaluations(result.run_id)
        stored = s.load_run(result.run_id).config
    assert stored["identity"]["screen"] == 3
    screened = [r for r in rows if r["fidelity"] == "screen"]
    steps = [r for r in rows if r["fidelity"] == "search"]
    assert screened and all(r["rung"] == 0 and r["epochs"] == 0.0 for r in screened)
    assert all(r["rung"] == 1 for r in steps)
    for rnd in sorted({r["round"] for r in screened}):
        mine = [r for r in screened if r["round"] == rnd]
        evaluated = {scheme_key(r["scheme"]) for r in steps if r["round"] == rnd}
        promoted = [r for r in mine if scheme_key(r["scheme"]) in evaluated]
        dropped = [r for r in mine if scheme_key(r["scheme"]) not in evaluated]
        # 3 x a round's proposals: 2, or fewer in the round --max-steps cuts short
        assert len(mine) == 3 * len(promoted) and len(promoted) in ((1, 2) if rnd else (2,))
        def score(r):  # a screen that failed or whose measured PR misses γ is never promoted
            return r["val_accuracy"] if r["state"] == State.COMPLETE and meets(r["pr"], r["fr"], cfg.target_pr) \
                else -1.0

        worst_promoted = min(score(r) for r in promoted)
        assert worst_promoted > -1.0 and all(score(r) <= worst_promoted for r in dropped)
    # the budget counts the screening too
    assert result.compute == pytest.approx(sum(float(r["compute"] or 0.0) for r in screened + steps))


def test_screen_is_checked_and_part_of_the_run(inputs, tmp_path):
    for bad in (0, 21, 1.5):
        with pytest.raises(ValidationError, match="--screen"):
            open_study(config(inputs, tmp_path, screen=bad))


@pytest.mark.slow
def test_a_resumed_round_reads_its_screens_back(inputs, tmp_path):
    """Ctrl-C in the middle of a round's screening: the resumed round proposes the same schemes and screens only those
    not screened yet (no scheme screened twice), then promotes as an uninterrupted run would."""
    from automc.search import SearchConfig
    from automc.search.study import SearchInterrupted

    cfg = config(inputs, tmp_path, strategy="random", max_steps=8, per_round=2, screen=3)
    seen = []

    def stop(event):
        if event.kind == "screen" and event.round == 1:
            seen.append(event)
            if len(seen) == 2:  # two screens into round 1
                raise KeyboardInterrupt

    with pytest.raises(SearchInterrupted) as info:
        search(cfg, progress=stop)
    run_id = info.value.run_id
    result = search(SearchConfig(resume=run_id, store=cfg.store, device="cpu"))
    assert result.state == State.COMPLETE
    with open_store(cfg.store) as s:
        rows = s.run_evaluations(run_id)
    screened = [(r["round"], r["scheme"]) for r in rows if r["fidelity"] == "screen" and r["state"] != "INTERRUPTED"]
    assert len(screened) == len(set(screened)) and len([x for x in screened if x[0] == 1]) == 6
    other = search(config(inputs, tmp_path / "b", strategy="random", max_steps=8, per_round=2, screen=3))
    with open_store(cfg.store.replace(str(tmp_path), str(tmp_path / "b"))) as s:
        plain = s.run_evaluations(other.run_id)

    def searched(rs):
        return [(r["round"], r["scheme"]) for r in rs if r["fidelity"] == "search"]

    assert searched(rows) == searched(plain)


@pytest.mark.parametrize("screen", [1, 3])
def test_a_proposal_missing_the_flops_target_at_rung_0_is_never_trained(inputs, tmp_path, screen):
    """--target-fr, with or without --screen: the shapes are built at rung 0, so proposals whose FLOPs reduction
    misses the target are dropped before any fine-tuning; a target nothing reaches trains nothing and the budget
    still ends the run."""
    cfg = config(inputs, tmp_path, strategy="random", max_steps=4, per_round=2, screen=screen, target_fr=0.95,
                 budget=0.5)
    result = search(cfg)
    with open_store(cfg.store) as s:
        rows = s.run_evaluations(result.run_id)
    screened = [r for r in rows if r["fidelity"] == "screen"]
    assert screened and all(r["fr"] is None or r["fr"] < 0.945 for r in screened)
    assert [r for r in rows if r["fidelity"] == "search"] == []  # nothing trained
    assert result.compute >= 0.5 and result.state == State.COMPLETE
