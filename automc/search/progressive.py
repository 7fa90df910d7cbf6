"""Progressive search (Algorithm 2 of the AutoMC paper): extend evaluated schemes by one strategy, chosen by F_mo's
predicted accuracy.

Each round: parents come from the evaluated schemes that do not reach γ yet, the base model included (mostly the
Pareto front on validation accuracy vs. their share of γ, some from the rest); a few hundred candidates are drawn:
a parent, one more strategy among the extensions the space allows and not yet tried (a method first, then one of
its strategies), and a random closing step when that one does not reach γ. Every candidate is feasible: its PR is
computed (``SearchSpace.pr``), so F_mo predicts only what is not computable, each step's accuracy change ÂR, and
the candidates are ranked by ACC = A(longest evaluated prefix)·Π(1+ÂR); the best are proposed, plus an occasional
random one. In the first rounds the best schemes of similar past tasks (``context.transfer``) are proposed as well.

Departures from a literal reading of Algorithm 2:
- Proposals reach γ by construction (``SearchSpace``: a step's share of γ is absolute, the last step closes it), so
  the paper's second objective, PR, is a constraint met by every proposal, not a prediction to trade against.
- Candidates are drawn method first: drawn uniformly over strategies, 65% of them were HOS (5 832 of the 8 934
  grid points), so F_mo, with a few dozen steps to learn from, mostly chose among HOS variants.

F_mo is not persisted: it is retrained from the history on resume by replaying the same seeded fits (warm start
on ``context.prior``, then one fit per evaluated round, each until its held-out loss stops improving), so a resumed
search proposes what an uninterrupted one would.

F_mo earns its place or steps aside: before a round's new steps are fitted, the Spearman correlation of F_mo's
predicted step AR with the observed one on those steps is measured, beside that of the prior (``prior_ar``: the
mean observed AR of the same strategy, else the same method, over this task's earlier steps and other tasks'). The
rule (``ranking=auto``): rank by F_mo unless, over the last ``quality_rounds`` rounds where both were measured, its
mean correlation is below the prior's; then rank by the prior. Each round's measures and ranking are in
``state_dict``/``summary`` (the stored run, the result, the report), and every proposal's prediction is stored on
its evaluation (``predictions``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from automc._num import finite
from automc.search._base import Context, History, Observation, Option, SchemeKey, SearchStrategy, StepRecord
from automc.search.pareto import non_dominated

RANKINGS = ("auto", "fmo", "prior", "random")


def remaining(obs: Observation, base: Observation) -> float | None:
    """The share of the base model's parameters ``obs`` keeps (1 for the base model), from params or PR."""
    if not obs.scheme:
        return 1.0
    if obs.params is not None and base.params:
        return obs.params / base.params
    return None if obs.pr is None else 1.0 - obs.pr


def step_records(history: History, task: str, features: Sequence[float]) -> list[tuple[int, StepRecord]]:
    """(round, step) for every complete observation whose parent is known and complete: child vs. parent."""
    out = []
    for obs in history.complete():
        parent = history.get(obs.parent)
        if parent is None or not parent.ok or not obs.scheme or not parent.val_accuracy or obs.val_accuracy is None:
            continue
        kept, parent_kept = remaining(obs, history.base), remaining(parent, history.base)
        if kept is None or not parent_kept:
            continue
        ar = obs.val_accuracy / parent.val_accuracy - 1.0
        out.append((obs.round, StepRecord(obs.parent, obs.scheme[-1], task, tuple(features), ar,
                                          1.0 - kept / parent_kept)))
    out.sort(key=lambda x: (x[0], x[1].parent, x[1].strategy))  # independent of the history's order
    return out


def _method(strategy_id: str) -> str:
    return strategy_id.split("(", 1)[0]


def prior_ar(records: Sequence[StepRecord], strategies: Sequence[str]) -> np.ndarray:
    """The prior's step AR for each of ``strategies``: the mean observed AR of the same strategy in ``records``
    when it was seen, else of its method, else of all records (0 without records)."""
    by_sid: dict[str, list[float]] = defaultdict(list)
    by_method: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if math.isfinite(r.step_ar):
            by_sid[r.strategy].append(r.step_ar)
            by_method[_method(r.strategy)].append(r.step_ar)
    every = [x for xs in by_sid.values() for x in xs]
    overall = float(np.mean(every)) if every else 0.0
    return np.array([float(np.mean(by_sid[s])) if s in by_sid else float(np.mean(by_method[_method(s)]))
                     if _method(s) in by_method else overall for s in strategies], dtype=float)


def _spearman(predicted: Sequence[float], observed: Sequence[float]) -> float | None:
    """Spearman's rho, or None when it is undefined (fewer than 3 steps, or a constant side)."""
    from scipy.stats import spearmanr

    if len(observed) < 3 or np.ptp(predicted) == 0 or np.ptp(observed) == 0:
        return None
    rho = float(spearmanr(predicted, observed).statistic)
    return rho if math.isfinite(rho) else None


class ProgressiveStrategy(SearchStrategy):
    """F_mo-guided progressive search; ``context.options`` may override the defaults of ``OPTIONS``."""

    name = "progressive"
    reuses: ClassVar[bool] = True
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "candidates": Option("int", 300, "(parent, strategy) pairs F_mo scores per round", low=1),
        "front_share": Option("float", 0.8, "share of candidate parents drawn from the Pareto front", low=0, high=1),
        "explore": Option("float", 0.1, "share of proposals drawn at random among the candidates", low=0, high=1),
        "transfer_rounds": Option("int", 2, "rounds in which past tasks' front schemes are proposed (0: none)", low=0),
        "replay": Option("int", 256, "past steps replayed with each round's new ones", low=0),
        "fit_steps": Option("int", 2000, "F_mo's most optimiser steps per round (a guard: it stops when its "
                                         "held-out loss stops improving)", low=1),
        "warm_steps": Option("int", 2000, "F_mo's most optimiser steps on other tasks' steps", low=1),
        "patience": Option("int", 100, "optimiser steps without a better held-out loss before F_mo stops", low=1),
        "hidden": Option("int", 32, "F_mo's hidden width", low=1),
        "ranking": Option("choice", "auto", "what ranks the candidates: auto (F_mo unless the prior correlates "
                          "better), fmo, prior or random (ablations)", choices=RANKINGS),
        "quality_rounds": Option("int", 3, "latest measured rounds whose correlations the auto ranking compares",
                                 low=1),
    }

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.task = context.task.id if context.task is not None else "this-task"
        self.features = tuple(float(x) for x in context.task_vector)
        self.prior = [r for r in context.prior if len(r.features) == len(self.features) and r.task != self.task]
        self._predictor: Any = None
        self._warm = False
        self._fitted_through = -1  # last round F_mo was trained on
        self.losses: list[float] = []
        self.fit_log: list[dict[str, Any]] = []  # each fit: round (-1: warm start), steps, how it stopped, loss
        # each evaluated round, before its steps are fitted: Spearman of F_mo's and the prior's predicted step AR
        # with the observed one on those steps, and the ranking its proposals used
        self.quality: list[dict[str, Any]] = []

    # -- F_mo ------------------------------------------------------------------------------------------------
    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            from automc.search.predictor import Predictor  # torch: only when a search runs

            self._predictor = Predictor(self.context.space, self.context.embeddings, len(self.features),
                                        self.context.seed, hidden=int(self.options["hidden"]))
        return self._predictor

    @property
    def trained_on(self) -> dict[str, int]:
        """Task -> distinct steps F_mo has been trained on (this task's and other tasks')."""
        return dict(self._predictor.trained_on) if self._predictor is not None else {}

    def _catch_up(self, history: History) -> None:
        """Warm-start on the prior once, then, for each evaluated round not fitted yet in round order, measure the
        predictions on its steps and fit them (with replayed past steps)."""
        if not self._warm:
            self._warm = True
            if self.prior:
                self._fit(-1, self.prior, int(self.options["warm_steps"]))
        by_round: dict[int, list[StepRecord]] = defaultdict(list)
        for r, rec in step_records(history, self.task, self.features):
            by_round[r].append(rec)
        for r in sorted(k for k in by_round if k > self._fitted_through):
            past = self.prior + [rec for k in sorted(by_round) if k < r for rec in by_round[k]]
            self._measure(r, by_round[r], past)
            rng = np.random.default_rng([self.context.seed & 0xFFFFFFFF, r, 0xF0])
            k = min(len(past), int(self.options["replay"]))
            replay = [past[i] for i in sorted(rng.choice(len(past), size=k, replace=False))] if k else []
            self._fit(r, by_round[r] + replay, int(self.options["fit_steps"]))
            self._fitted_through = r

    def _fit(self, round_: int, records: Sequence[StepRecord], max_steps: int) -> None:
        p = self.predictor
        self.losses.append(p.fit(records, max_steps=max_steps, patience=int(self.options["patience"])))
        if p.last_fit:
            self.fit_log.append({"round": round_, **p.last_fit})

    def _measure(self, round_: int, new: Sequence[StepRecord], past: Sequence[StepRecord]) -> None:
        """Record how F_mo (as it stands, before fitting ``new``) and the prior (from ``past``) rank ``new``."""
        p = self.predictor
        fresh = [rec for rec in new if not p.has_seen(rec)]  # only steps F_mo was never fitted on
        observed = [rec.step_ar for rec in fresh]
        fmo = None
        if p.fits and fresh:
            fmo = _spearman(p.predict([rec.parent for rec in fresh], [rec.strategy for rec in fresh],
                                      self.features), observed)
        prior = _spearman(prior_ar(past, [rec.strategy for rec in fresh]), observed) if past and fresh else None
        self.quality.append({"round": round_, "steps": len(fresh), "fmo": fmo, "prior": prior,
                             "ranking": self._ranking()})

    def _ranking(self) -> str:
        """What ranks this round's candidates: random until F_mo learnt something (or as asked), else F_mo
        unless its mean correlation over the last ``quality_rounds`` measured rounds is below the prior's."""
        mode = str(self.options["ranking"])
        if mode == "random" or not self.predictor.fits:
            return "random"
        if mode != "auto":
            return mode
        both = [q for q in self.quality if q["fmo"] is not None and q["prior"] is not None]
        recent = both[-int(self.options["quality_rounds"]):]
        if recent and np.mean([q["fmo"] for q in recent]) < np.mean([q["prior"] for q in recent]):
            return "prior"
        return "fmo"

    def _step_ar(self, history: History, parents: Sequence[SchemeKey], strategies: Sequence[str],
                 ranking: str) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """(F_mo's, the prior's, the ranking's) predicted step AR of appending ``strategies[i]`` to
        ``parents[i]``; F_mo's is None before it learnt anything, the prior's without past steps."""
        fmo = self.predictor.predict(parents, strategies, self.features) if self.predictor.fits else None
        past = self.prior + [rec for _, rec in step_records(history, self.task, self.features)]
        prior = prior_ar(past, strategies) if past else None
        chosen = prior if ranking == "prior" else fmo
        return fmo, prior, (chosen if chosen is not None else np.zeros(len(strategies)))

    # -- proposals -------------------------------------------------------------------------------------------
    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        if n <= 0:
            return []
        self._catch_up(history)
        picks: list[SchemeKey] = []
        taken: set[SchemeKey] = set()

        def take(key: SchemeKey) -> None:
            picks.append(key)
            taken.add(key)

        for key in self._transfer(history, n):
            take(key)
        candidates = self._candidates(history, rng, taken)
        left = n - len(picks)
        if not candidates or left <= 0:
            return picks
        n_random = int(left * self.options["explore"])
        n_random += int(rng.random() < left * self.options["explore"] - n_random)
        chosen = self._select(history, candidates, left - n_random, rng)
        for i in chosen:
            take(candidates[i])
        chosen_set = set(chosen)
        rest = [i for i in range(len(candidates)) if i not in chosen_set and candidates[i] not in taken]
        for i in rng.permutation(len(rest))[: n - len(picks)].tolist() if rest else []:
            take(candidates[rest[i]])
        return picks[:n]

    def _transfer(self, history: History, n: int) -> list[SchemeKey]:
        """Past tasks' best schemes that are feasible here and not tried yet, in the first rounds."""
        transfer = list(self.context.transfer)
        if not transfer or history.rounds >= int(self.options["transfer_rounds"]):
            return []
        space = self.context.space
        per_round = min(max(1, n // 2), math.ceil(len(transfer) / int(self.options["transfer_rounds"])))
        out: list[SchemeKey] = []
        for scheme in transfer:
            key = tuple(scheme)
            if all(s in space.index for s in key) and space.feasible(key) and not history.tried(key) \
                    and key not in out:
                out.append(key)
            if len(out) >= per_round:
                break
        return out

    def _candidates(self, history: History, rng: np.random.Generator, taken: set[SchemeKey]) -> list[SchemeKey]:
        """Up to ``candidates`` distinct untried feasible schemes: an evaluated scheme that does not reach γ yet
        (the base model included; mostly from the front on validation accuracy vs its share of γ), one more
        strategy (a method first, then one of its strategies), and, when that does not reach γ either, a random
        closing step."""
        space = self.context.space
        done = [o for o in history.complete(with_base=True) if o.val_accuracy is not None
                and not space.closed(o.scheme) and space.extensions(o.scheme)]
        if not done:
            return []
        points = np.array([[o.val_accuracy, space.share(o.scheme)] for o in done], dtype=float)
        on_front = {o.scheme for o, keep in zip(done, non_dominated(points.reshape(-1, 2), (True, True)),
                                                 strict=True) if keep}
        groups = [sorted(s for s in (o.scheme for o in done) if s in on_front),
                  sorted(s for s in (o.scheme for o in done) if s not in on_front)]
        tried: dict[SchemeKey, set[str]] = defaultdict(set)
        for key in (o.scheme for o in history):
            if key:
                tried[key[:-1]].add(key[-1])
        total = int(self.options["candidates"])
        share = self.options["front_share"] if groups[0] and groups[1] else float(bool(groups[0]))
        from_front = rng.random(total) < share
        counts: dict[SchemeKey, int] = defaultdict(int)
        for f in from_front:
            g = groups[0] if f else groups[1]
            counts[g[int(rng.integers(len(g)))]] += 1
        out: list[SchemeKey] = []
        seen = set(taken)
        for parent in sorted(counts):
            by_method: dict[str, list[str]] = defaultdict(list)
            for sid in space.extensions(parent):
                if sid not in tried[parent]:
                    by_method[space.strategy(sid).method].append(sid)
            methods = sorted(by_method)
            for _ in range(counts[parent]):  # a method uniformly among those left, then one of its strategies
                if not methods:
                    break
                m = methods[int(rng.integers(len(methods)))]
                options = by_method[m]
                key = space.close((*parent, options.pop(int(rng.integers(len(options))))), rng)
                if not options:
                    methods.remove(m)
                if key is not None and key not in seen and not history.tried(key):
                    seen.add(key)
                    out.append(key)
        return out

    def _select(self, history: History, candidates: list[SchemeKey], k: int, rng: np.random.Generator) -> list[int]:
        """Indices of the ``k`` candidates with the best predicted validation accuracy: the longest evaluated
        prefix's accuracy times F_mo's predicted change of each step still to evaluate. Every candidate reaches γ
        (its PR is computed, not predicted), so accuracy alone ranks them."""
        if k <= 0:
            return []
        ranking = self._ranking()
        if ranking == "random":  # nothing learned yet (first round, no reuse), or the random-order ablation
            return sorted(rng.permutation(len(candidates))[:k].tolist())
        acc = predicted_accuracy(history, candidates, lambda ps, ss: self._step_ar(history, ps, ss, ranking)[2])
        order = np.lexsort((np.arange(len(candidates)), -acc))
        return [int(i) for i in order[:k]]

    # -- hooks -----------------------------------------------------------------------------------------------
    def observe(self, history: History, new: Sequence[Observation]) -> None:
        self._catch_up(history)

    def predictions(self, history: History, schemes: Sequence[SchemeKey]) -> dict[SchemeKey, dict[str, Any]]:
        """For each step the proposed schemes evaluate (each prefix not evaluated yet), what was predicted before it
        ran: F_mo's and the prior's AR of that step, the ranking used, and the validation accuracy that ranking
        expects for it (from the longest evaluated prefix's validation accuracy); nothing before F_mo or the prior
        learnt anything."""
        steps = [key[:i] for key in dict.fromkeys(tuple(s) for s in schemes) for i in range(1, len(key) + 1)
                 if key[:i] not in history]
        steps = list(dict.fromkeys(steps))
        if not steps:
            return {}
        ranking = self._ranking()
        fmo, prior, _ = self._step_ar(history, [k[:-1] for k in steps], [k[-1] for k in steps], ranking)
        if fmo is None and prior is None:
            return {}
        used = prior if ranking == "prior" else fmo
        acc: dict[SchemeKey, float | None] = {}
        for i, key in enumerate(steps):  # a prefix comes before its extensions: chain from the evaluated one
            parent = history.get(key[:-1])
            before = (parent.val_accuracy if parent is not None and parent.ok else None) if key[:-1] in history \
                else acc.get(key[:-1])
            acc[key] = None if before is None or used is None else finite(before * (1.0 + float(used[i])))
        return {key: {"step_ar": None if fmo is None else finite(fmo[i]),
                      "prior_ar": None if prior is None else finite(prior[i]), "ranked_by": ranking,
                      "val_accuracy": acc[key]}
                for i, key in enumerate(steps)}

    def summary(self) -> dict[str, Any]:
        """F_mo's training data (steps by task), each round's measured rank correlation and ranking, each fit."""
        return {"trained_on": self.trained_on, "quality": self.quality, "fits": self.fit_log}

    def state_dict(self) -> dict[str, Any]:
        """What F_mo was trained on and how well it ranked (for reports); its weights are rebuilt from the history
        on resume."""
        return {"fitted_through": self._fitted_through, "trained_on": self.trained_on,
                "fits": self._predictor.fits if self._predictor is not None else 0, "quality": self.quality,
                "fit_log": self.fit_log}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: the next ``propose`` retrains F_mo from the history exactly as it was trained."""


def predicted_accuracy(history: History, keys: Sequence[SchemeKey],
                       step_change: Callable[[list[SchemeKey], list[str]], np.ndarray]) -> np.ndarray:
    """The validation accuracy predicted for each scheme: its longest evaluated prefix's accuracy times the
    predicted relative change (``step_change(parents, strategies)``, one batched call) of each step after it."""
    starts, parents, steps = [], [], []
    for key in keys:
        start = len(key)
        while start > 0 and not ((o := history.get(key[:start])) is not None and o.ok and o.val_accuracy is not None):
            start -= 1
        starts.append(start)
        parents += [key[:i] for i in range(start, len(key))]
        steps += [key[i] for i in range(start, len(key))]
    change = _step_change(step_change(parents, steps)) if steps else np.zeros(0)
    out, j = np.empty(len(keys)), 0
    for i, (key, start) in enumerate(zip(keys, starts, strict=True)):
        n = len(key) - start
        out[i] = float(history.get(key[:start]).val_accuracy or 0.0) * float(np.prod(1.0 + change[j:j + n]))
        j += n
    return out


def _step_change(pred: np.ndarray) -> np.ndarray:
    """F_mo's predicted relative accuracy change per step (its first output), as a 1-D array."""
    pred = np.asarray(pred, dtype=float)
    return pred if pred.ndim == 1 else pred[:, 0]
