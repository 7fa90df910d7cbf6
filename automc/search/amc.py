"""AMC: a DDPG agent walks the prunable layers and picks each one's keep ratio (He et al., AMC: AutoML for Model
Compression and Acceleration on Mobile Devices, ECCV 2018).

Episode = one policy. At layer ``t`` the agent sees 10 numbers (min-max scaled over the layers): index, kernel
size, input and output channels, stride, the conv's FLOPs and parameters, the share of the base parameters removed
so far, the share still to remove to reach γ, and its previous action. Its action (a keep ratio in
``[min_keep, 1]``, exploration noise from a truncated normal whose width decays per episode) is clipped to the
layer's wall (``PolicySpace.wall``: the most the layer may keep while the layers after it can still reach γ and
``--target-fr``), so every episode meets the targets exactly as computed. The episode is a one-step PLP scheme,
screened at rung 0 (prune + BatchNorm re-estimation, no fine-tune, ``Evaluator.screen``); its reward, the rung-0
validation accuracy minus a moving-average baseline, is given to every step of the episode (discount 1, as the
reference). The first ``amc_warmup`` episodes are uniform random. Each round's best screened episodes go to the
search fidelity (``round_size``), and the run's best goes to the final fine-tune, like every other strategy.

The agent is Stable-Baselines3's ``DDPG`` (actor and critic 300-300), driven step by step rather than through
``learn()``: the loop, not the agent, evaluates episodes (batched, written to the store as they finish), so the
strategy adds the finished episodes' transitions to the agent's replay buffer and calls its ``train``. Its
weights and optimisers are the strategy's state; the replay buffer is rebuilt from the stored screenings on
resume (an episode's states follow from its policy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from automc.search._base import Context, History, Observation, Option, SchemeKey, SearchStrategy
from automc.search._perlayer import plp_scheme, policy_of, transferred
from automc.search.rl import _from_json, _to_json

if TYPE_CHECKING:
    from automc.compress.layerwise import PolicySpace

STATE_VERSION = 1
N_FEATURES = 10
MIN_NOISE = 0.02  # the noise width a repeated policy starts widening from


class LayerWalk:
    """The states of the layer walk (AMC's 10 features) for a model's ``PolicySpace`` and the targets."""

    def __init__(self, layers: PolicySpace, target_pr: float, target_fr: float | None, min_keep: float) -> None:
        self.layers, self.target_pr, self.target_fr, self.min_keep = layers, target_pr, target_fr, min_keep
        static = np.array([[t, lay.kernel, lay.in_channels, lay.channels, lay.stride, lay.flops, lay.params]
                           for t, lay in enumerate(layers.layers)], np.float64)
        lo, hi = static.min(0), static.max(0)
        self.static = np.where(hi > lo, (static - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)

    def __len__(self) -> int:
        return len(self.layers)

    def state(self, prefix: Sequence[float]) -> np.ndarray:
        """The state at layer ``len(prefix)`` (after the last layer: the last layer's, as the terminal state)."""
        t = min(len(prefix), len(self) - 1)
        params = self.layers.params_of([*prefix, *[1.0] * (len(self) - len(prefix))])
        reduced = 1.0 - params / self.layers.base_params
        to_go = max(0.0, self.target_pr - reduced)
        previous = prefix[-1] if prefix else 1.0
        return np.concatenate([self.static[t], [reduced, to_go, previous]]).astype(np.float32)

    def transitions(self, policy: Sequence[float]) -> list[tuple[np.ndarray, float, np.ndarray, bool]]:
        """``(state, action, next state, done)`` of each step of the episode that chose ``policy``."""
        out = []
        for t, keep in enumerate(policy):
            out.append((self.state(policy[:t]), float(keep), self.state(policy[:t + 1]), t == len(policy) - 1))
        return out


class AMCStrategy(SearchStrategy):
    """DDPG over per-layer keep ratios; its options (``OPTIONS``) size the episodes, the agent and the exploration."""

    name: ClassVar[str] = "amc"
    per_layer: ClassVar[bool] = True
    learns_from_screen: ClassVar[bool] = True
    reuses: ClassVar[bool] = True
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "amc_episodes": Option("int", 16, "episodes screened per round", low=1),
        "amc_promote": Option("int", 1, "of each round's episodes, how many best go to the search fidelity", low=1),
        "amc_warmup": Option("int", 32, "uniform random episodes before the agent acts (the reference: 100)", low=0),
        "amc_min_keep": Option("float", 0.1, "the smallest keep ratio of a layer", above=0, high=1),
        "amc_noise": Option("float", 0.5, "initial width of the exploration noise, in keep ratio", low=0),
        "amc_noise_decay": Option("float", 0.99, "the noise width's factor per learnt episode", low=0, high=1),
        "amc_lr_actor": Option("float", 1e-4, "the actor's Adam learning rate", above=0),
        "amc_lr_critic": Option("float", 1e-3, "the critic's Adam learning rate", above=0),
        "amc_baseline": Option("float", 0.5, "moving-average weight of the reward baseline", low=0, high=1),
        "amc_batch": Option("int", 64, "replay batch of one gradient step", low=1),
        "amc_criterion": Option("choice", "l1_weight", "channel criterion of the pruned layers",
                                choices=("l1_weight", "l2_weight", "l2_bn")),
        "amc_val_images": Option("int", 1000, "validation images of an episode's rung-0 score (0: all; "
                                   "fewer are cheaper, so more episodes fit the budget)", low=0),
        "amc_epochs_factor": Option("float", 1.0, "the PLP step's fine-tune at the search fidelity, in epochs "
                                    "(a catalogue grid value)", low=0),
    }

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        if context.layers is None:
            raise ValueError("the amc strategy needs the base model's layers (Context.layers)")
        o = self.options
        self.walk = LayerWalk(context.layers, float(context.target_pr), context.target_fr, float(o["amc_min_keep"]))
        self.learned: set[str] = set()  # evaluation ids of the screenings learnt from
        self.episodes = 0  # learnt episodes
        self.baseline: float | None = None
        self.updates = 0
        self._agent: Any = None
        self._restore: set[str] | None = None
        self._transfer = transferred(context)

    # -- the agent -------------------------------------------------------------------------------------------
    def _ensure(self) -> Any:
        if self._agent is not None:
            return self._agent
        import gymnasium as gym
        import torch
        from stable_baselines3 import DDPG
        from stable_baselines3.common.logger import configure

        class Spaces(gym.Env):  # the agent reads only the spaces: the loop, not ``learn()``, runs episodes
            observation_space = gym.spaces.Box(-np.inf, np.inf, (N_FEATURES,), np.float32)
            action_space = gym.spaces.Box(float(self.walk.min_keep), 1.0, (1,), np.float32)

        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.context.seed) & 0xFFFFFFFF)
            agent = DDPG("MlpPolicy", Spaces(), learning_rate=float(o["amc_lr_critic"]), buffer_size=1_000_000,
                         learning_starts=0, batch_size=int(o["amc_batch"]), gamma=1.0, tau=0.01,
                         policy_kwargs={"net_arch": [300, 300]}, device="cpu")
        for g in agent.actor.optimizer.param_groups:  # the reference's actor learns 10x slower than its critic
            g["lr"] = float(o["amc_lr_actor"])
        agent.lr_schedule = lambda _: float(o["amc_lr_critic"])
        agent._update_learning_rate = lambda optimizers: None  # two fixed rates, not SB3's one schedule
        agent.set_logger(configure(None, [""]))
        self._agent = agent
        return agent

    def _act(self, state: np.ndarray) -> float:
        import torch

        with torch.no_grad():
            scaled = self._agent.actor(torch.as_tensor(state[None], dtype=torch.float32)).numpy()
        return float(self._agent.policy.unscale_action(scaled)[0, 0])

    def _episode(self, rng: np.random.Generator, explore: bool, widen: int = 0,
                 actions: Sequence[float] | None = None) -> tuple[float, ...]:
        """One walk: random actions in warm-up, else the actor's with truncated-normal noise (``widen`` doubles its
        width that many times: the walk repeated a known policy), or ``actions`` as given (a policy transferred from
        a similar task); each action clipped to its layer's wall."""
        lo = self.walk.min_keep
        sigma = float(self.options["amc_noise"]) * float(self.options["amc_noise_decay"]) ** self.episodes
        sigma = max(sigma, MIN_NOISE) * 2.0 ** widen if widen else sigma
        from automc.catalog.policy import kept

        policy: list[float] = []
        layers = self.walk.layers
        for t in range(len(self.walk)):
            if actions is not None:
                a = float(actions[t])
            elif explore:
                a = float(rng.uniform(lo, 1.0))
            else:
                a = _truncated_normal(rng, self._act(self.walk.state(policy)), sigma, lo, 1.0)
            wall = layers.wall(policy, self.walk.target_pr, self.walk.target_fr, min_keep=lo)
            c = layers.channels[t]
            policy.append(kept(min(max(a, lo), wall), c) / c)
        return tuple(policy)

    # -- learning --------------------------------------------------------------------------------------------
    def _learn(self, history: History) -> None:
        """Add every screened episode not yet learnt from (in screening order) to the replay buffer, with its
        reward, and train the agent a step per layer of each."""
        agent = self._ensure()
        beta = float(self.options["amc_baseline"])
        if self._restore is not None:  # a resumed run: the episodes learnt before, in their order, without training
            for obs in history.screened:
                if obs.evaluation_id in self._restore:
                    self._remember(obs, beta)
            self._restore = None
        new = [o for o in history.screened if o.evaluation_id not in self.learned
               and policy_of(self.context.space, o.scheme) is not None]
        if not new:
            return
        import torch

        for obs in new:
            self._remember(obs, beta)
        if self.episodes > int(self.options["amc_warmup"]) and agent.replay_buffer.size() > 0:
            state = np.random.get_state()  # SB3 samples its replay with numpy's global stream
            try:
                np.random.seed([int(self.context.seed) & 0xFFFFFFFF, self.updates])
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(self.context.seed) + self.updates)
                    steps = len(new) * len(self.walk)
                    agent.train(gradient_steps=steps, batch_size=int(self.options["amc_batch"]))
                    self.updates += steps
            finally:
                np.random.set_state(state)

    def _remember(self, obs: Observation, beta: float) -> None:
        """One finished episode into the replay buffer (a failed screening scores 0)."""
        agent = self._agent
        acc = float(obs.val_accuracy) if obs.ok and obs.val_accuracy is not None else 0.0
        b = acc if self.baseline is None else self.baseline
        reward = acc - b
        self.baseline = beta * b + (1.0 - beta) * acc
        policy = policy_of(self.context.space, obs.scheme)
        for s, a, s2, done in self.walk.transitions(policy):
            action = agent.policy.scale_action(np.array([[a]], np.float32))
            agent.replay_buffer.add(s[None], s2[None], action, np.array([reward], np.float32), np.array([done]),
                                    [{}])
        self.learned.add(obs.evaluation_id)
        self.episodes += 1

    def observe(self, history: History, new: Sequence[Observation]) -> None:
        self._learn(history)

    # -- proposing -------------------------------------------------------------------------------------------
    def screen_images(self) -> int | None:
        return int(self.options["amc_val_images"]) or None

    def round_size(self, n: int, screen: int) -> tuple[int, int]:
        return int(self.options["amc_episodes"]), min(n, int(self.options["amc_promote"]))

    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        if n <= 0:
            return []
        self._learn(history)  # catches up on screenings made after the last stored state (a resumed run)
        self._ensure()
        o = self.options
        tried = {o_.scheme for o_ in history.screened} | {o_.scheme for o_ in history}
        out: list[SchemeKey] = []
        # warm-up starts from the policies of the most similar past tasks (--reuse), mapped stage by stage
        for actions in self._transfer if self.episodes < int(o["amc_warmup"]) else []:
            scheme = plp_scheme(self.context.space, self._episode(rng, True, actions=actions),
                                str(o["amc_criterion"]), float(o["amc_epochs_factor"]))
            if len(out) < n and scheme not in tried and scheme not in out:
                out.append(scheme)
        repeats = 0
        for _ in range(20 * n):
            if len(out) >= n:
                break
            # a converged actor repeats policies already screened: widen its noise rather than draw at random
            explore = self.episodes + len(out) < int(o["amc_warmup"]) or repeats >= 12
            scheme = plp_scheme(self.context.space, self._episode(rng, explore, repeats),
                                str(o["amc_criterion"]), float(o["amc_epochs_factor"]))
            if scheme in tried or scheme in out:
                repeats += 1
                continue
            out.append(scheme)
            repeats = 0
        return out

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        agent = self._ensure()
        return {"version": STATE_VERSION, "updates": self.updates, "learned": sorted(self.learned),
                "policy": _to_json(agent.policy.state_dict()),
                "actor_optimizer": _to_json(agent.actor.optimizer.state_dict()),
                "critic_optimizer": _to_json(agent.critic.optimizer.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        agent = self._ensure()
        agent.policy.load_state_dict(_from_json(state["policy"]))
        for opt, key in ((agent.actor.optimizer, "actor_optimizer"), (agent.critic.optimizer, "critic_optimizer")):
            d = _from_json(state[key])
            d["state"] = {int(k): v for k, v in d["state"].items()}
            opt.load_state_dict(d)
        self.updates = int(state["updates"])
        self._restore = set(state["learned"])  # the replay buffer, rebuilt from the stored screenings (``_learn``)

    def summary(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "updates": self.updates, "baseline": self.baseline}


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """A draw of N(mean, sd) truncated to [lo, hi] (rejection; the bound itself after 100 misses)."""
    if sd <= 0:
        return float(min(max(mean, lo), hi))
    for _ in range(100):
        x = float(rng.normal(mean, sd))
        if lo <= x <= hi:
            return x
    return float(min(max(mean, lo), hi)) if math.isfinite(mean) else lo
