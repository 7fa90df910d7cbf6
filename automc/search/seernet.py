"""SeerNet: an accuracy predictor over per-layer policies, trained on policies chosen for its uncertainty, then
projected gradient ascent on it under the budget (Wang et al., SeerNet, IJCV 2023; pruning ratios only, no
bit-widths).

Policy = one keep ratio per prunable layer (``compress.layerwise``). Labels are the policies' rung-0 validation
accuracies (prune + BatchNorm re-estimation, no fine-tune: ``Evaluator.screen``), the only labels cheap enough to
gather by the hundred on a CPU. The predictor is an ensemble of small MLPs (``members`` × hidden 15, ELU, each on a
bootstrap sample, from its own initial weights); the spread of their predictions is its uncertainty. Each round:

- before ``warmup`` labelled policies: random feasible policies (``PolicySpace.project`` of uniform draws);
- then ``1 - exploit`` of the round by evolutionary search for the predictor's uncertainty (pymoo's GA, every
  individual repaired onto the budget), and ``exploit`` of it by projected gradient ascent on log(predicted
  accuracy) from the best labelled policies, every iterate projected onto the budget (``ascend``).

The round's best screened policies go to the search fidelity (``round_size``) and the run's best to the final
fine-tune, like every other strategy. The predictor is refitted from the stored screenings each round (seeded by
the run's seed and the round), so a resumed run needs no state but the record of the predictor's rank correlation
on each round's new labels, measured before it learns them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from automc.search._base import Context, History, Option, SchemeKey, SearchStrategy
from automc.search._perlayer import plp_scheme, policy_of, transferred

if TYPE_CHECKING:
    import torch

    from automc.compress.layerwise import PolicySpace


class PolicyPredictor:
    """An ensemble of MLPs from keep ratios to accuracy: ``predict`` gives the members' mean and spread."""

    def __init__(self, n_layers: int, *, members: int = 5, hidden: int = 15, seed: int = 0) -> None:
        import torch
        from torch import nn

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) & 0xFFFFFFFF)
            self.nets = [nn.Sequential(nn.Linear(n_layers, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                       nn.Linear(hidden, 1)) for _ in range(members)]
        self.seed = int(seed)
        self.mean, self.scale = 0.0, 1.0

    def fit(self, x: np.ndarray, y: np.ndarray, *, steps: int = 500, lr: float = 0.01) -> None:
        """Each member on its own bootstrap sample of ``(x, y)`` (standardised y), full batch, Adam."""
        import torch

        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, len(y)])
        self.mean, self.scale = float(np.mean(y)), float(np.std(y)) or 1.0
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor((np.asarray(y) - self.mean) / self.scale, dtype=torch.float32)[:, None]
        for net in self.nets:
            idx = torch.as_tensor(rng.integers(0, len(y), len(y)))
            opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
            for _ in range(int(steps)):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(xt[idx]), yt[idx])
                loss.backward()
                opt.step()

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's prediction ``(members, n)`` of ``x`` ``(n, layers)``, in accuracy units (differentiable)."""
        import torch

        return torch.stack([net(x)[:, 0] for net in self.nets]) * self.scale + self.mean

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's mean and standard deviation at each row of ``x``."""
        import torch

        with torch.no_grad():
            p = self.members(torch.as_tensor(np.atleast_2d(x), dtype=torch.float32))
        return p.mean(0).numpy(), p.std(0).numpy()


def ascend(predictor: PolicyPredictor, start: Sequence[float], layers: PolicySpace, target_pr: float,
           target_fr: float | None, *, steps: int = 50, lr: float = 0.05, min_keep: float = 0.1) -> list[tuple[
               float, ...]]:
    """Projected gradient ascent on log(predicted accuracy) from ``start``: every iterate (the start included) is
    projected onto the budget (``PolicySpace.project``); returns them in order."""
    import torch

    p = layers.project(start, target_pr, target_fr, min_keep=min_keep)
    out = [p]
    for _ in range(int(steps)):
        x = torch.tensor([p], dtype=torch.float32, requires_grad=True)
        torch.log(predictor.members(x).mean().clamp_min(1e-3)).backward()
        g = x.grad[0].numpy()
        norm = float(np.linalg.norm(g))
        if not np.isfinite(norm) or norm == 0.0:
            break
        # a step of ``lr`` in keep ratio along the gradient, then back onto the budget
        nxt = layers.project(np.asarray(p) + lr * g / norm, target_pr, target_fr, min_keep=min_keep)
        out.append(nxt)
        if nxt == p:
            break
        p = nxt
    return out


class SeerNetStrategy(SearchStrategy):
    """Predictor-guided per-layer search; its options (``OPTIONS``) size the rounds, the predictor and the ascent."""

    name: ClassVar[str] = "seernet"
    per_layer: ClassVar[bool] = True
    learns_from_screen: ClassVar[bool] = True
    reuses: ClassVar[bool] = True
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "seernet_policies": Option("int", 16, "policies screened per round", low=1),
        "seernet_promote": Option("int", 1, "of each round's policies, how many best go to the search fidelity",
                                  low=1),
        "seernet_warmup": Option("int", 24, "random feasible policies before the predictor guides", low=2),
        "seernet_exploit": Option("float", 0.5, "share of a round's policies from gradient ascent (the rest by "
                                  "the predictor's uncertainty)", low=0, high=1),
        "seernet_members": Option("int", 5, "predictor ensemble members", low=2),
        "seernet_hidden": Option("int", 15, "hidden width of each member", low=1),
        "seernet_fit_steps": Option("int", 400, "Adam steps of each member's fit", low=1),
        "seernet_generations": Option("int", 15, "GA generations of the uncertainty search", low=1),
        "seernet_population": Option("int", 32, "GA population of the uncertainty search", low=4),
        "seernet_ascent_steps": Option("int", 40, "gradient-ascent steps per start", low=1),
        "seernet_ascent_lr": Option("float", 0.05, "gradient-ascent step, in keep ratio", above=0),
        "seernet_min_keep": Option("float", 0.1, "the smallest keep ratio of a layer", above=0, high=1),
        "seernet_criterion": Option("choice", "l1_weight", "channel criterion of the pruned layers",
                                    choices=("l1_weight", "l2_weight", "l2_bn")),
        "seernet_val_images": Option("int", 1000, "validation images of an episode's rung-0 score (0: all; "
                                   "fewer are cheaper, so more episodes fit the budget)", low=0),
        "seernet_epochs_factor": Option("float", 1.0, "the PLP step's fine-tune at the search fidelity, in epochs "
                                        "(a catalogue grid value)", low=0),
    }

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        if context.layers is None:
            raise ValueError("the seernet strategy needs the base model's layers (Context.layers)")
        self.layers: PolicySpace = context.layers
        self.quality: list[dict[str, Any]] = []  # per round: the predictor's rank correlation on the new labels
        self._predictor: PolicyPredictor | None = None
        self._fitted_on = 0
        self._transfer = transferred(context)

    def _labelled(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        rows = [(policy_of(self.context.space, o.scheme), o) for o in history.screened]
        pairs = [(p, float(o.val_accuracy) if o.ok and o.val_accuracy is not None else 0.0) for p, o in rows if p]
        x = np.array([p for p, _ in pairs], np.float32).reshape(len(pairs), len(self.layers))
        return x, np.array([a for _, a in pairs], np.float32)

    def predictor(self, history: History, round_: int) -> PolicyPredictor | None:
        """The ensemble fitted on every labelled policy so far (None before two labels)."""
        x, y = self._labelled(history)
        if len(y) < 2:
            return None
        if self._predictor is None or self._fitted_on != len(y):
            o = self.options
            if self._predictor is not None and len(y) > self._fitted_on:  # its rank correlation on unseen labels
                self._score(self._predictor, x[self._fitted_on:], y[self._fitted_on:], round_)
            self._predictor = PolicyPredictor(len(self.layers), members=int(o["seernet_members"]),
                                              hidden=int(o["seernet_hidden"]),
                                              seed=(int(self.context.seed) * 7919 + round_) & 0x7FFFFFFF)
            self._predictor.fit(x, y, steps=int(o["seernet_fit_steps"]))
            self._fitted_on = len(y)
        return self._predictor

    def _score(self, predictor: PolicyPredictor, x: np.ndarray, y: np.ndarray, round_: int) -> None:
        if len(y) < 3 or np.ptp(y) == 0:
            return
        from scipy.stats import spearmanr

        rho = spearmanr(predictor.predict(x)[0], y).statistic
        self.quality.append({"round": round_, "n": int(len(y)), "spearman": None if np.isnan(rho) else float(rho)})

    # -- proposing -------------------------------------------------------------------------------------------
    def screen_images(self) -> int | None:
        return int(self.options["seernet_val_images"]) or None

    def round_size(self, n: int, screen: int) -> tuple[int, int]:
        return int(self.options["seernet_policies"]), min(n, int(self.options["seernet_promote"]))

    def _target(self) -> tuple[float, float | None, float]:
        return float(self.context.target_pr), self.context.target_fr, float(self.options["seernet_min_keep"])

    def _random(self, rng: np.random.Generator) -> tuple[float, ...]:
        pr, fr, lo = self._target()
        return self.layers.project(rng.uniform(lo, 1.0, len(self.layers)), pr, fr, min_keep=lo)

    def _uncertain(self, predictor: PolicyPredictor, k: int, rng: np.random.Generator) -> list[tuple[float, ...]]:
        """The ``k`` most uncertain distinct policies of a GA run on the predictor's spread (pymoo)."""
        from pymoo.algorithms.soo.nonconvex.ga import GA
        from pymoo.core.problem import Problem
        from pymoo.core.repair import Repair
        from pymoo.optimize import minimize

        pr, fr, lo = self._target()
        layers, o = self.layers, self.options

        class OntoBudget(Repair):
            def _do(self, problem: Any, x: np.ndarray, **kwargs: Any) -> np.ndarray:
                return np.array([layers.project(row, pr, fr, min_keep=lo) for row in x])

        class Spread(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=len(layers), n_obj=1, xl=lo, xu=1.0)

            def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
                out["F"] = -predictor.predict(x)[1]

        with np.errstate(invalid="ignore"):  # pymoo's SBX takes a power of NaN where two parents agree: harmless
            res = minimize(Spread(), GA(pop_size=int(o["seernet_population"]), repair=OntoBudget(),
                                        eliminate_duplicates=True),
                           ("n_gen", int(o["seernet_generations"])), seed=int(rng.integers(2**31 - 1)), verbose=False)
        pop = res.pop
        order = np.argsort(pop.get("F")[:, 0], kind="stable")
        return [tuple(float(v) for v in pop.get("X")[i]) for i in order[:k * 4]]

    def _exploit(self, predictor: PolicyPredictor, history: History, k: int,
                 rng: np.random.Generator) -> list[tuple[float, ...]]:
        """Gradient ascent from the best labelled policies (then random ones): each run's last iterate."""
        pr, fr, lo = self._target()
        o = self.options
        x, y = self._labelled(history)
        starts = [tuple(x[i]) for i in np.argsort(-y, kind="stable")[:k]]
        starts += [self._random(rng) for _ in range(2 * k)]
        return [ascend(predictor, s, self.layers, pr, fr, steps=int(o["seernet_ascent_steps"]),
                       lr=float(o["seernet_ascent_lr"]), min_keep=lo)[-1] for s in starts]

    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        if n <= 0:
            return []
        o = self.options
        round_ = history.rounds if not history.screened else max(history.rounds, history.screened[-1].round + 1)
        predictor = self.predictor(history, round_) if len(history.screened) >= int(o["seernet_warmup"]) else None
        candidates: list[tuple[float, ...]] = []
        if predictor is not None:
            k_exploit = round(n * float(o["seernet_exploit"]))
            candidates += self._exploit(predictor, history, k_exploit, rng) if k_exploit else []
            candidates += self._uncertain(predictor, n - k_exploit, rng) if n > k_exploit else []
        elif len(history.screened) < int(o["seernet_warmup"]):  # warm-up starts from similar tasks' policies
            pr, fr, lo = self._target()
            candidates += [self.layers.project(p, pr, fr, min_keep=lo) for p in self._transfer]
        candidates += [self._random(rng) for _ in range(4 * n)]  # warm-up, or what the guided ones repeat
        tried = {x.scheme for x in history.screened} | {x.scheme for x in history}
        out: list[SchemeKey] = []
        for policy in candidates:
            scheme = plp_scheme(self.context.space, policy, str(o["seernet_criterion"]),
                                float(o["seernet_epochs_factor"]))
            if scheme not in tried and scheme not in out:
                out.append(scheme)
            if len(out) >= n:
                break
        return out

    def observe(self, history: History, new: Sequence[Any]) -> None:
        if len(history.screened) >= int(self.options["seernet_warmup"]):
            self.predictor(history, history.screened[-1].round + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"quality": list(self.quality)}  # the predictor itself is refitted from the stored screenings

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.quality = [dict(q) for q in state.get("quality", [])]

    def summary(self) -> dict[str, Any]:
        return {"labelled": self._fitted_on, "predictor_quality": list(self.quality)}
