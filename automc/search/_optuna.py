"""What the Optuna-based strategies share: the gene encoding of a scheme and the study rebuilt from the history.

Encoding: position ``i`` of a scheme is two genes, ``m{i}`` (categorical: the method, or END from position 1 on)
and ``k{i}`` (a float in [0, 1]: where the strategy sits in that method's grid, in catalogue order). Why not one
integer gene over all 8 934 strategies: random sampling and NSGA-II mutation would pick END with probability
1/8 935, so almost every scheme would have the full length L; TPE on one categorical of 8 935 values learns
nothing from a few dozen trials. With a method gene, END is one choice in seven, and the position gene keeps
locality for TPE (neighbouring values share the method and its leading hyperparameters, the grid being expanded
in product order). NSGA-II's uniform crossover and resampling mutation work on either kind of gene.

A trial is a feasible scheme (one that reaches γ, ``SearchSpace.feasible``): decoded genes are repaired into one
(``repair``), and the prefixes the loop evaluates on the way are not trials. Objectives: validation accuracy and FR
(at the same PR γ, what a feasible scheme trades accuracy for), both maximised, with the constraint
``target_fr - fr`` when the user set ``--target-fr``.

Stateless across rounds: each ``propose`` rebuilds an in-memory study from the history (every COMPLETE feasible
observation a trial; FAILED ones FAIL trials), asks trials from a sampler seeded from the round's random stream,
and never tells them.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from automc.search._base import Context, History, SchemeKey, SearchStrategy

if TYPE_CHECKING:
    import optuna

    from automc.search.space import SearchSpace

END = "END"


class SchemeEncoding:
    """Map schemes to gene dicts (``m{i}``, ``k{i}``) and back, over one search space."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.length = int(space.max_length)
        self.by_method: dict[str, list[str]] = {}
        for s in space.strategies:  # catalogue order: the grid expanded in product order
            if s.method in space.excluded:
                continue
            self.by_method.setdefault(s.method, []).append(s.id)
        self.methods = tuple(self.by_method)
        self._slot = {sid: (m, j) for m, ids in self.by_method.items() for j, sid in enumerate(ids)}

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        out: dict[str, Any] = {}
        for i in range(self.length):
            # the first position never ends the scheme: the empty scheme is the base model
            out[f"m{i}"] = CategoricalDistribution(self.methods if i == 0 else (*self.methods, END))
            out[f"k{i}"] = FloatDistribution(0.0, 1.0)
        return out

    def encode(self, scheme: SchemeKey) -> dict[str, Any]:
        """Genes of a (non-empty) scheme; positions after its end hold END and the middle of the grid."""
        params: dict[str, Any] = {}
        for i in range(self.length):
            if i < len(scheme):
                method, j = self._slot[scheme[i]]
                params[f"m{i}"] = method
                params[f"k{i}"] = (j + 0.5) / len(self.by_method[method])
            else:
                params[f"m{i}"] = END
                params[f"k{i}"] = 0.5
        return params

    def decode(self, params: dict[str, Any]) -> SchemeKey:
        """The raw scheme the genes spell, up to the first END (not yet checked against the rules)."""
        out: list[str] = []
        for i in range(self.length):
            method = params[f"m{i}"]
            if method == END:
                break
            ids = self.by_method[method]
            out.append(ids[min(int(float(params[f"k{i}"]) * len(ids)), len(ids) - 1)])
        return tuple(out)


def repair(space: SearchSpace, scheme: SchemeKey, rng: np.random.Generator) -> SchemeKey:
    """``scheme`` made feasible: cut before its first step the rules refuse (a step that would overshoot γ asks its
    method's closing share instead, ``SearchSpace.closing``), then closed by a random closer when it falls short of
    γ; () when nothing can be built."""
    out: SchemeKey = ()
    for sid in scheme:
        if space.closed(out):
            break
        step = space.closing(out, sid)
        if step is None or not space.allowed((*out, step)):
            break
        out = (*out, step)
    return tuple(space.close(out, rng) or ()) if out else ()


def fill_random(space: SearchSpace, history: History, taken: set[SchemeKey], n: int,
                rng: np.random.Generator, *, tries: int = 200) -> list[SchemeKey]:
    """Up to ``n`` random feasible schemes (random length 1..L) that are neither tried nor taken."""
    out: list[SchemeKey] = []
    for _ in range(tries):
        if len(out) >= n:
            break
        scheme = tuple(space.random_scheme(rng, int(rng.integers(1, space.max_length + 1))) or ())
        if scheme and space.feasible(scheme) and not history.tried(scheme) and scheme not in taken:
            taken.add(scheme)
            out.append(scheme)
    return out


def build_study(encoding: SchemeEncoding, history: History, target_fr: float | None,
                sampler: optuna.samplers.BaseSampler, *,
                system_attrs: Callable[[int], dict[str, Any]] | None = None) -> optuna.Study:
    """An in-memory study holding every evaluated feasible scheme of ``history`` as a finished trial, in evaluation
    order (module docstring). ``system_attrs(i)`` adds attributes to the ``i``-th COMPLETE trial (NSGA-II's
    generation)."""
    import optuna

    distributions = encoding.distributions()
    trials = []
    n_complete = 0
    for obs in history:
        if not obs.scheme or not encoding.space.feasible(obs.scheme):
            continue
        params = encoding.encode(obs.scheme)
        if obs.ok and obs.val_accuracy is not None and obs.fr is not None:
            attrs = system_attrs(n_complete) if system_attrs else {}
            n_complete += 1
            fr = float(obs.fr)
            trials.append(optuna.trial.create_trial(
                params=params, distributions=distributions, values=[float(obs.val_accuracy), fr],
                constraints=None if target_fr is None else {"fr": float(target_fr) - fr}, system_attrs=attrs))
        else:
            trials.append(optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL, params=params, distributions=distributions))
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    study.add_trials(trials)
    return study


class OptunaStrategy(SearchStrategy):
    """A strategy that asks an Optuna sampler for genes, rebuilt from the history each round."""

    max_asks_per_scheme = 10  # asks per wanted scheme before random schemes fill the round

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.encoding = SchemeEncoding(context.space)

    @abstractmethod
    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """A fresh sampler seeded from the round's random stream."""

    def trial_system_attrs(self, index: int) -> dict[str, Any]:
        return {}

    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        import optuna

        if n <= 0:
            return []
        space = self.context.space
        seed = int(rng.integers(2**31))
        old = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study = build_study(self.encoding, history, self.context.target_fr, self.make_sampler(seed),
                                    system_attrs=self.trial_system_attrs)
                distributions = self.encoding.distributions()
                out: list[SchemeKey] = []
                taken: set[SchemeKey] = set()
                for _ in range(self.max_asks_per_scheme * n):
                    if len(out) >= n:
                        break
                    trial = study.ask(fixed_distributions=distributions)
                    scheme = repair(space, self.encoding.decode(trial.params), rng)
                    if scheme and not history.tried(scheme) and scheme not in taken:
                        taken.add(scheme)
                        out.append(scheme)
        finally:
            optuna.logging.set_verbosity(old)
        return out + fill_random(space, history, taken, n - len(out), rng)
