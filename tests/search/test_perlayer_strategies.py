"""The per-layer strategies, ``--strategy amc`` and ``--strategy seernet``: every policy meets the targets as computed
and as measured, each learns a planted reward (one layer's keep ratio alone decides "accuracy"), the DDPG agent's
state survives a resume (weights stored, replay rebuilt from the store), SeerNet's predictor is less sure away from
its data and its projected gradient ascent never leaves the budget, and a SIGKILLed search of either resumes losing at
most the evaluation in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from automc.compress.layerwise import PolicySpace, apply_policy
from automc.compress.metrics import count_flops, count_params
from automc.compress.models import build_model
from automc.kb import open_store
from automc.kb.states import State
from automc.search._base import Context, History, Observation, round_rng, search_rows
from automc.search._perlayer import policy_of
from automc.search.amc import AMCStrategy
from automc.search.seernet import PolicyPredictor, SeerNetStrategy, ascend
from automc.search.space import SearchSpace
from tests.search.test_study import write_inputs

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", 10, width=8)


@pytest.fixture(scope="module")
def layers(model) -> PolicySpace:
    return PolicySpace(model, X)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace()


def amc(space, layers, *, target_fr=None, seed=0, **options) -> AMCStrategy:
    return AMCStrategy(Context(space=space, target_pr=0.4, target_fr=target_fr, seed=seed, layers=layers,
                               options=options))


def seernet(space, layers, *, target_fr=None, seed=0, **options) -> SeerNetStrategy:
    return SeerNetStrategy(Context(space=space, target_pr=0.4, target_fr=target_fr, seed=seed, layers=layers,
                                   options={"seernet_fit_steps": 200, "seernet_generations": 5, **options}))


MAKE = {"amc": lambda space, layers, **kw: amc(space, layers, amc_episodes=6, amc_warmup=6, **kw),
        "seernet": lambda space, layers, **kw: seernet(space, layers, seernet_policies=6, seernet_warmup=6, **kw)}


def screened(history: History, scheme, acc: float, r: int) -> Observation:
    obs = Observation(scheme, State.COMPLETE, acc, round=r, evaluation_id=f"e{len(history.screened)}")
    history.screened.append(obs)
    return obs


def base_history() -> History:
    return History(Observation((), State.COMPLETE, 0.9, 0.0, 0.0))


def drive(strategy, space, history: History, rounds: int, n: int, seed: int = 0) -> list[float]:
    """``rounds`` rounds of ``n`` proposals, each screened with the planted accuracy; the accuracies in order."""
    returns = []
    for r in range(rounds):
        for key in strategy.propose(history, n, round_rng(seed, r)):
            returns.append(planted(policy_of(space, key)))
            screened(history, key, returns[-1], r)
        strategy.observe(history, [])
    return returns


@pytest.mark.parametrize("target_fr", [None, 0.45])
@pytest.mark.parametrize("name", sorted(MAKE))
def test_every_policy_meets_the_targets_as_computed_and_as_measured(model, layers, space, name, target_fr):
    strategy = MAKE[name](space, layers, target_fr=target_fr)
    history = base_history()
    for r in range(3):  # warm-up (random), then the agent or the predictor
        proposals = strategy.propose(history, 6, round_rng(0, r))
        assert len(proposals) == 6
        for key in proposals:
            assert space.feasible(key), space.why_not(key)
            policy = policy_of(space, key)
            assert layers.meets(policy, 0.4, target_fr)
            pruned, _ = apply_policy(model, policy, "l1_weight", X)
            assert 1 - count_params(pruned) / layers.base_params >= 0.4
            if target_fr is not None:
                assert 1 - count_flops(pruned, X) / layers.base_flops >= target_fr
            screened(history, key, planted(policy), r)
        strategy.observe(history, [])
    if name == "amc":
        assert strategy.episodes == 18 and strategy.updates > 0
    else:
        assert strategy.summary()["labelled"] == 18


def planted(policy) -> float:
    """The planted accuracy: layer 4's keep ratio alone decides it."""
    return float(policy[4])


@pytest.mark.parametrize("name", ["amc", "seernet"])
def test_the_return_rises_on_a_planted_reward(layers, space, name):
    """DDPG's episodes, and SeerNet's guided policies, find what a planted reward pays for."""
    strategy = amc(space, layers, amc_episodes=8, amc_warmup=16, amc_noise=0.3, amc_noise_decay=0.95) \
        if name == "amc" else seernet(space, layers, seernet_policies=8, seernet_warmup=16)
    returns = drive(strategy, space, base_history(), 10 if name == "amc" else 6, 8, seed=3)
    warmup, last = np.mean(returns[:16]), np.mean(returns[-16:])
    assert last > warmup + 0.2, (warmup, last)


def test_the_predictor_is_less_sure_away_from_its_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.45, 0.55, (40, 6)).astype(np.float32)  # policies near 0.5 everywhere
    y = (0.5 + x[:, 0] - x[:, 1]).astype(np.float32)
    predictor = PolicyPredictor(6, members=5, seed=0)
    predictor.fit(x, y, steps=300)
    near = predictor.predict(rng.uniform(0.45, 0.55, (20, 6)))[1]
    far = predictor.predict(rng.choice([0.1, 1.0], (20, 6)))[1]
    assert np.median(far) > 3 * np.median(near), (np.median(near), np.median(far))


@pytest.mark.parametrize("target_fr", [None, 0.45])
def test_projected_gradient_ascent_never_leaves_the_budget_and_climbs(layers, target_fr) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 1.0, (64, len(layers))).astype(np.float32)
    predictor = PolicyPredictor(len(layers), seed=0)
    predictor.fit(x, (0.2 + 0.7 * x[:, 4]).astype(np.float32), steps=300)  # planted: layer 4 decides
    start = layers.uniform(0.4, target_fr)
    path = ascend(predictor, start, layers, 0.4, target_fr, steps=30, lr=0.1)
    assert len(path) > 2 and all(layers.meets(p, 0.4, target_fr) for p in path)
    assert path[-1][4] > start[4] + 0.1  # it moved the budget to the layer that pays
    assert predictor.predict(np.array([path[-1]]))[0][0] > predictor.predict(np.array([start]))[0][0]


def test_a_restored_agent_continues_where_the_stored_one_stood(layers, space):
    """Weights and optimisers from the stored state, the replay buffer rebuilt from the screenings: the restored
    strategy proposes what the original would have."""
    a = amc(space, layers, amc_episodes=4, amc_warmup=4)
    history = base_history()
    drive(a, space, history, 3, 4)
    state = json.loads(json.dumps(a.state_dict()))  # as the store keeps it
    b = amc(space, layers, seed=99, amc_episodes=4, amc_warmup=4)  # other initial weights: all must come from state
    b.load_state_dict(state)
    assert b.propose(history, 4, round_rng(0, 3)) == a.propose(history, 4, round_rng(0, 3))
    assert b.episodes == a.episodes == 12 and b.baseline == a.baseline
    assert b._agent.replay_buffer.size() == a._agent.replay_buffer.size() == 12 * len(layers)


def test_a_restored_seernet_refits_the_same_predictor(layers, space):
    a = seernet(space, layers, seernet_policies=4, seernet_warmup=4)
    history = base_history()
    drive(a, space, history, 3, 4)
    b = seernet(space, layers, seernet_policies=4, seernet_warmup=4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.propose(history, 4, round_rng(0, 3)) == a.propose(history, 4, round_rng(0, 3))
    assert b.summary()["predictor_quality"] == a.summary()["predictor_quality"] != []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["amc", "seernet"])
def test_sigkill_mid_search_then_resume_keeps_every_finished_episode(tmp_path, name):
    data, weights = write_inputs(tmp_path, seed=3)
    store = f"ladybug://{tmp_path / 'kb'}"
    args = ["search", "--model", "resnet8", "--width", "4", "--weights", str(weights), "--data", str(data),
            "--target-pr", "0.4", "--budget", "1000", "--max-steps", "3", "--epochs", "0.3", "--final-epochs", "0",
            "--strategy", name, "--strategy-option", f"{name}_{'episodes' if name == 'amc' else 'policies'}=4",
            "--strategy-option", f"{name}_warmup=4",
            "--no-reuse", "--per-round", "1", "--batch-size", "32", "--lr", "0.05", "--device", "cpu",
            "--store", store, "--cache-dir", str(tmp_path / "cache"), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from automc.cli.app import main; main()", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache = tmp_path / "cache" / "cache"
    deadline = time.monotonic() + 300
    try:
        while len(list(cache.glob("*.pt"))) < 1:  # round 0's episodes screened and its best trained
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # into round 1's screenings
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open_store(store) as s:
        (run,) = s.list_runs()
        before = {r["id"]: r for r in s.run_evaluations(run["id"])}
    from typer.testing import CliRunner

    from automc.cli.app import app

    r = CliRunner().invoke(app, ["search", "--resume", run["id"], "--store", store, "--json"])
    assert r.exit_code == 0, r.output
    with open_store(store) as s:
        rows = s.run_evaluations(run["id"])
        assert s.load_run(run["id"]).state == State.COMPLETE
    assert len(search_rows(rows)) == 3
    after = {r["id"]: r for r in rows}
    finished = [i for i, r in before.items() if r["state"] in (State.COMPLETE, State.FAILED)]
    assert all(after[i]["state"] == before[i]["state"] for i in finished)  # nothing finished was lost or redone
    lost = [r for r in rows if r["state"] == State.INTERRUPTED]
    assert len(lost) <= 1 and all(r["error"].startswith("stale") for r in lost)
    episodes = {r["id"] for r in rows if r["fidelity"] == "screen" and r["state"] in (State.COMPLETE, State.FAILED)}
    assert len(episodes) >= 8
    if name == "amc":
        with open_store(store) as s:
            learned = set(s.load_run(run["id"]).strategy_state["learned"])
        assert learned == episodes  # the resumed agent learnt from the killed session's episodes too


def test_a_policy_maps_onto_another_depth_stage_by_stage() -> None:
    from automc.search._perlayer import stagewise

    resnet20 = [16] * 3 + [32] * 3 + [64] * 3
    resnet56 = (0.9,) * 9 + (0.6,) * 9 + (0.3,) * 9
    assert stagewise(resnet56, resnet20) == pytest.approx((0.9,) * 3 + (0.6,) * 3 + (0.3,) * 3)
    assert stagewise((0.5, 0.7, 0.9), [8] * 2 + [16] * 2 + [32] * 2) == (0.5, 0.5, 0.7, 0.7, 0.9, 0.9)
    assert stagewise((0.4, 0.6), resnet20) == (0.4,) * 3 + (0.6,) * 6  # a short source: its last ratio goes on
    assert stagewise((0.1, 0.2, 0.3), [8, 8, 16]) == (0.1, 0.2, 0.3)  # the same length: as it is


@pytest.mark.parametrize("name", ["amc", "seernet"])
def test_the_first_policies_come_from_the_most_similar_tasks(layers, space, name):
    """``--reuse``: a ResNet-56 policy found on another task (``Context.transfer``) is this ResNet-20's first
    proposal, mapped stage by stage and put on the budget; grid schemes in the transfer are ignored."""
    from automc.search._perlayer import plp_scheme, stagewise

    deep = (1.0,) * 9 + (0.5,) * 9 + (0.2,) * 9  # prunes the last stage hardest
    transfer = (space.parse("SFP(target_ratio_factor=1.0)"), plp_scheme(space, deep, "l1_weight", 1.0))
    cls = AMCStrategy if name == "amc" else SeerNetStrategy
    strategy = cls(Context(space=space, target_pr=0.4, seed=0, layers=layers, transfer=transfer))
    first = policy_of(space, strategy.propose(base_history(), 4, round_rng(0, 0))[0])
    mapped = stagewise(deep, layers.channels)
    assert layers.meets(first, 0.4)
    expected = layers.clip(mapped, 0.4) if name == "amc" else layers.project(mapped, 0.4)
    assert first == expected and first[-1] < first[0]


def test_a_budget_spent_on_screenings_still_ends_with_a_final_model(tmp_path):
    """The budget ends inside the first round, before any promotion: the best screened policy gets the final
    fine-tune (re-applied from the base model), as AMC fine-tunes its best episode."""
    from automc.search import search
    from tests.search.test_study import config

    inputs = write_inputs(tmp_path, seed=4)
    cfg = config(inputs, tmp_path / "run", strategy="amc", budget=0.5, max_steps=None, final_epochs=0.3, top_k=1,
                 strategy_options={"amc_episodes": 8, "amc_warmup": 8})
    res = search(cfg)
    with open_store(cfg.store) as s:
        rows = s.run_evaluations(res.run_id)
    screens = [r for r in rows if r["fidelity"] == "screen" and r["state"] == State.COMPLETE]
    finals = [r for r in rows if r["fidelity"] == "final"]
    assert screens and not search_rows(rows) and len(finals) == 1 and finals[0]["state"] == State.COMPLETE
    best = max(screens, key=lambda r: (r["val_accuracy"], r["pr"]))
    assert finals[0]["scheme"] == best["scheme"] and finals[0]["accuracy"] is not None
