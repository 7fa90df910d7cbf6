"""Search baselines (NSGA-II, TPE, RL) on synthetic histories: rules, determinism, resume, learning."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from automc.kb.states import State
from automc.search._base import Context, History, Observation, SchemeKey, round_rng
from automc.search._optimize import _walk
from automc.search._optuna import SchemeEncoding, build_study, repair
from automc.search.evolution import EvolutionStrategy
from automc.search.rl import RLStrategy
from automc.search.space import SearchSpace
from automc.search.tpe import TPEStrategy

GAMMA = 0.4
STRATEGIES = {"evolution": EvolutionStrategy, "tpe": TPEStrategy, "rl": RLStrategy}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace()


def fake_observation(space: SearchSpace, scheme: SchemeKey, round_: int) -> Observation:
    """A made-up evaluation: PR is the computed one, FR and accuracy vary with the scheme, a few schemes fail."""
    digest = zlib.crc32(" > ".join(scheme).encode())
    if digest % 23 == 0:
        return Observation(scheme, State.FAILED, round=round_, error="synthetic failure")
    pr = space.pr(scheme, GAMMA)
    acc = 0.9 - 0.4 * pr**2 + 0.02 * ((digest % 100) / 100.0)
    return Observation(scheme, "COMPLETE", val_accuracy=acc, pr=pr, fr=pr * (0.5 + (digest % 50) / 100.0),
                       round=round_)


def base_history() -> History:
    return History(base=Observation((), "COMPLETE", val_accuracy=0.9, pr=0.0))


def run_round(strategy, space, history: History, r: int, n: int = 8, seed: int = 0) -> list[SchemeKey]:
    """One round as the loop runs it: propose, evaluate the round walk's steps one at a time, observe."""
    proposed = strategy.propose(history, n, round_rng(seed, r))
    new = []
    while (key := next(_walk(proposed, history), None)) is not None:  # a failure ends its proposal
        obs = fake_observation(space, key, r)
        history.add(obs)
        new.append(obs)
    strategy.observe(history, new)
    return proposed


def make(name: str, space: SearchSpace, seed: int = 0):
    return STRATEGIES[name](Context(space=space, target_pr=GAMMA, seed=seed, per_round=8))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_proposals_are_allowed_new_and_at_most_n(name, space):
    strategy = make(name, space)
    history = base_history()
    assert strategy.propose(history, 0, round_rng(0, 0)) == []
    for r in range(4):
        before = {o.scheme for o in history}
        proposed = run_round(strategy, space, history, r)
        assert 0 < len(proposed) <= 8
        assert len(set(proposed)) == len(proposed)
        for scheme in proposed:
            assert scheme and space.feasible(scheme), space.why_not(scheme)
            assert fake_observation(space, scheme, r).pr in (None, pytest.approx(GAMMA))
            assert scheme not in before
    assert any(not o.ok for o in history)  # the FAIL path was exercised


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_deterministic_for_a_seed(name, space):
    runs = []
    for _ in range(2):
        strategy, history = make(name, space, seed=3), base_history()
        for r in range(3):
            run_round(strategy, space, history, r, seed=3)
        runs.append([o.scheme for o in history])
    assert runs[0] == runs[1]
    other, history = make(name, space, seed=4), base_history()
    for r in range(3):
        run_round(other, space, history, r, seed=4)
    assert [o.scheme for o in history] != runs[0]


@pytest.mark.parametrize("name", ["evolution", "tpe"])
def test_optuna_strategy_resumed_from_the_history_proposes_what_it_would_have(name, space):
    strategy, history = make(name, space), base_history()
    for r in range(3):
        run_round(strategy, space, history, r)
    uninterrupted = strategy.propose(history, 8, round_rng(0, 3))
    stored = History(base=history.base, observations=list(history.observations))  # what the store gives back
    resumed = make(name, space).propose(stored, 8, round_rng(0, 3))
    assert resumed == uninterrupted


def test_rl_state_round_trip_gives_identical_proposals(space):
    strategy, history = make("rl", space), base_history()
    for r in range(3):
        run_round(strategy, space, history, r)
    state = json.loads(json.dumps(strategy.state_dict()))  # it must survive the store's JSON
    restored = make("rl", space, seed=99)  # other initial weights: everything must come from the state
    restored.load_state_dict(state)
    copy = History(base=history.base, observations=list(history.observations))
    assert restored.propose(copy, 8, round_rng(0, 3)) == strategy.propose(history, 8, round_rng(0, 3))
    # learning goes on identically (optimiser state and baseline restored too)
    for s, h in ((strategy, history), (restored, copy)):
        run_round(s, space, h, 3)
    assert restored.propose(copy, 8, round_rng(0, 4)) == strategy.propose(history, 8, round_rng(0, 4))
    assert restored.method_probabilities() == pytest.approx(strategy.method_probabilities(), abs=1e-7)


def test_rl_learns_a_planted_bandit(space):
    """Reward 1-ish when the first method is NS, low otherwise: P(NS first) must rise clearly."""
    strategy, history = make("rl", space), base_history()
    before = strategy.method_probabilities()["NS"]
    for r in range(12):
        proposed = strategy.propose(history, 8, round_rng(0, r))
        new = [Observation(s, "COMPLETE", val_accuracy=0.9 if s[0].startswith("NS(") else 0.1, pr=GAMMA, round=r)
               for s in proposed]
        for obs in new:
            history.add(obs)
        strategy.observe(history, new)
    after = strategy.method_probabilities()["NS"]
    assert before < 0.3
    assert after > before + 0.3
    assert strategy.updates == 12


def test_rl_reward_penalises_pr_below_target(space):
    strategy = make("rl", space)
    hit = strategy.reward(Observation(("x",), "COMPLETE", val_accuracy=0.9, pr=GAMMA), 0.9)
    below = strategy.reward(Observation(("x",), "COMPLETE", val_accuracy=0.9, pr=GAMMA / 2), 0.9)
    beyond = strategy.reward(Observation(("x",), "COMPLETE", val_accuracy=0.9, pr=0.9), 0.9)
    failed = strategy.reward(Observation(("x",), State.FAILED), 0.9)
    assert failed < below < hit == beyond


def test_encoding_round_trip_and_repair(space):
    enc = SchemeEncoding(space)
    rng = np.random.default_rng(0)
    for length in range(1, space.max_length + 1):
        scheme = space.random_scheme(rng, length)
        assert enc.decode(enc.encode(scheme)) == scheme
    too_costly = tuple(s for s in space.ids if space.epochs_factor(s) >= 2.5
                       and space.strategy(s).params["target_ratio_factor"] == 0.3)[:3]  # sums past the 4.0 cap
    assert not space.allowed(too_costly)
    fixed = repair(space, too_costly, rng)  # cut after the first, then closed by a random closer
    assert fixed[0] == too_costly[0] and len(fixed) == 2 and space.feasible(fixed)
    ns3, ns7, ns9 = (space.parse(f"NS(target_ratio_factor={v})")[0] for v in (0.3, 0.7, 0.9))
    assert repair(space, (ns3, ns9, ns3), rng) == (ns3, ns7)  # the overshooting step asks the closing share
    short = repair(space, (ns3,), rng)
    assert short[0] == ns3 and len(short) == 2 and space.feasible(short)


def test_rebuilt_study_gives_nsga2_a_real_population(space):
    """The history is cut into generations, so NSGA-II breeds from elites instead of sampling at random."""
    import optuna

    strategy, history = make("evolution", space), base_history()
    for r in range(3):
        run_round(strategy, space, history, r)
    trials = [o for o in history if space.feasible(o.scheme)]  # the prefixes evaluated on the way are not trials
    complete = [o for o in trials if o.ok]
    assert len(trials) < len(history)
    sampler = optuna.samplers.NSGAIISampler(population_size=strategy.population_size, seed=0)
    study = build_study(strategy.encoding, history, 0.2, sampler, system_attrs=strategy.trial_system_attrs)
    finished = study.get_trials(deepcopy=False)
    assert len(finished) == len(trials)
    assert [t.values for t in finished if t.values] == [[o.val_accuracy, o.fr] for o in complete]
    assert [t.constraints for t in finished if t.values] == [{"fr": 0.2 - o.fr} for o in complete]
    study.ask(fixed_distributions=strategy.encoding.distributions())
    generation = sampler.get_trial_generation(study, study.get_trials(deepcopy=False)[-1])
    assert generation == len(complete) // strategy.population_size >= 1
    parents = sampler.get_parent_population(study, generation)
    assert len(parents) == strategy.population_size
