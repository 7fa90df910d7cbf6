"""Progressive Pareto search (Algorithm 2 of the AutoMC paper): extend evaluated schemes by one strategy, chosen
by F_mo's predicted accuracy and parameter reduction.

Each round: parents come from the evaluated schemes (mostly the Pareto front on validation accuracy vs. PR, some
from the rest); a few hundred (parent, next strategy) candidates are drawn among the extensions the space allows
and not yet tried, a method first, then one of its strategies; F_mo predicts each step's (AR, PR), giving
ACC = A(parent)·(1+ÂR) and PAR = P(parent)·(1−P̂R); the predicted-Pareto candidates are proposed, plus an
occasional random one. In the first rounds the front schemes of similar past tasks (``context.transfer``) are
proposed as well.

Two departures from a literal reading of Algorithm 2, both from the benchmark (``bench/results/search_bench.md``):
- Both fronts (the parents', the predicted one) count PR only up to the target γ. Without the cap the scheme with
  the highest PR is always on the front whatever its accuracy, so a lineage that had collapsed to chance accuracy
  was extended round after round; the user asked for PR ≥ γ, not for more.
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
from collections.abc import Mapping, Sequence
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
            take((*candidates[i][0], candidates[i][1]))
        chosen_set = set(chosen)
        rest = [i for i in range(len(candidates)) if i not in chosen_set]
        for i in rng.permutation(len(rest))[: n - len(picks)].tolist() if rest else []:
            parent, sid = candidates[rest[i]]
            take((*parent, sid))
        return picks[:n]

    def _transfer(self, history: History, n: int) -> list[SchemeKey]:
        """Past tasks' front schemes (their longest allowed prefix) not evaluated yet, in the first rounds."""
        transfer = list(self.context.transfer)
        if not transfer or history.rounds >= int(self.options["transfer_rounds"]):
            return []
        space = self.context.space
        per_round = min(max(1, n // 2), math.ceil(len(transfer) / int(self.options["transfer_rounds"])))
        out: list[SchemeKey] = []
        for scheme in transfer:
            key = tuple(s for s in scheme)
            while key and not space.allowed(key):
                key = key[:-1]
            if key and key not in history and key not in out:
                out.append(key)
            if len(out) >= per_round:
                break
        return out

    def _candidates(self, history: History, rng: np.random.Generator,
                    taken: set[SchemeKey]) -> list[tuple[SchemeKey, str]]:
        """Up to ``candidates`` distinct untried (parent, next strategy) pairs, parents mostly from the front."""
        space = self.context.space
        done = [o for o in history.complete(with_base=True) if o.val_accuracy is not None
                and remaining(o, history.base) is not None and len(o.scheme) < space.max_length]
        # The front on (validation accuracy, PR up to γ) with PR from the kept share, so a base model without PR
        # counts; beyond γ only accuracy matters.
        gamma = float(self.context.target_pr)
        points = np.array([[o.val_accuracy, min(gamma, 1.0 - remaining(o, history.base))] for o in done], dtype=float)
        on_front = {o.scheme for o, keep in zip(done, non_dominated(points.reshape(-1, 2), (True, True)),
                                                 strict=True) if keep}
        groups = [sorted(s for s in (o.scheme for o in done) if s in on_front),
                  sorted(s for s in (o.scheme for o in done) if s not in on_front)]
        if not groups[0] and not groups[1]:
            return []
        tried: dict[SchemeKey, set[str]] = defaultdict(set)
        for key in (o.scheme for o in history):
            if key:
                tried[key[:-1]].add(key[-1])
        for key in taken:  # a proposed scheme's missing prefixes get evaluated with it
            for i in range(1, len(key) + 1):
                tried[key[:i - 1]].add(key[i - 1])
        total = int(self.options["candidates"])
        share = self.options["front_share"] if groups[0] and groups[1] else float(bool(groups[0]))
        from_front = rng.random(total) < share
        counts: dict[SchemeKey, int] = defaultdict(int)
        for f in from_front:
            g = groups[0] if f else groups[1]
            counts[g[int(rng.integers(len(g)))]] += 1
        out: list[tuple[SchemeKey, str]] = []
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
                out.append((parent, options.pop(int(rng.integers(len(options))))))
                if not options:
                    methods.remove(m)
        return out

    def _select(self, history: History, candidates: list[tuple[SchemeKey, str]], k: int,
                rng: np.random.Generator) -> list[int]:
        """Indices of ``k`` candidates: successive predicted Pareto fronts on (ACC, PR), preferring candidates
        that can still reach the target (predicted PR >= γ, or room for more steps), spread along each front."""
        if k <= 0:
            return []
        ranking = self._ranking()
        if ranking == "random":  # nothing learned yet (first round, no reuse), or the random-order ablation
            return sorted(rng.permutation(len(candidates))[:k].tolist())
        parents = [c[0] for c in candidates]
        _, _, ar = self._step_ar(history, parents, [c[1] for c in candidates], ranking)
        base = history.base
        a = np.array([history.get(q).val_accuracy for q in parents], dtype=float)
        kept = np.array([remaining(history.get(q), base) for q in parents], dtype=float)
        acc = a * (1.0 + ar)
        # PR is computed, not predicted (a stand-in until the search space computes a scheme's PR)
        from automc.compress.base import step_ratio
        gamma = float(self.context.target_pr)
        step_pr = np.array([step_ratio(gamma, 1.0, float(q), float(self.context.space.strategy(c[1]).params.get(
            "target_ratio_factor", 1.0))) for q, c in zip(kept, candidates, strict=True)])
        par = kept * (1.0 - step_pr)
        pr = 1.0 - par
        capped = np.minimum(pr, self.context.target_pr)  # beyond γ only accuracy counts (module docstring)
        lengths = np.array([len(q) + 1 for q in parents])
        reach = (pr >= self.context.target_pr) | (lengths < self.context.space.max_length)
        chosen: list[int] = []
        for pool in (np.flatnonzero(reach), np.flatnonzero(~reach)):
            left = pool
            while len(left) and len(chosen) < k:
                mask = non_dominated(np.stack([acc[left], capped[left]], 1), (True, True))
                layer = left[mask]
                need = k - len(chosen)
                if len(layer) > need:
                    # Prefer reaching γ, then spread evenly along the front by predicted PR.
                    hit = layer[pr[layer] >= self.context.target_pr]
                    miss = layer[pr[layer] < self.context.target_pr]
                    layer = np.concatenate([_spread(hit, pr, need), _spread(miss, pr, need - min(need, len(hit)))])
                chosen.extend(int(i) for i in layer[:need])
                left = left[~mask]
        return chosen

    # -- hooks -----------------------------------------------------------------------------------------------
    def observe(self, history: History, new: Sequence[Observation]) -> None:
        self._catch_up(history)

    def predictions(self, history: History, schemes: Sequence[SchemeKey]) -> dict[SchemeKey, dict[str, Any]]:
        """For each proposed scheme, what was predicted of its last step before it ran: F_mo's and the prior's step
        AR, the ranking used, and the validation accuracy that ranking expects (from the parent's validation
        accuracy); nothing before F_mo or the prior learnt anything."""
        if not schemes:
            return {}
        ranking = self._ranking()
        keys = [tuple(s) for s in schemes]
        fmo, prior, _ = self._step_ar(history, [k[:-1] for k in keys], [k[-1] for k in keys], ranking)
        if fmo is None and prior is None:
            return {}
        out: dict[SchemeKey, dict[str, Any]] = {}
        for i, key in enumerate(keys):
            f = None if fmo is None else finite(fmo[i])
            q = None if prior is None else finite(prior[i])
            used = q if ranking == "prior" else f
            parent = history.get(key[:-1])
            acc = parent.val_accuracy if parent is not None and parent.ok else None
            out[key] = {"step_ar": f, "prior_ar": q, "ranked_by": ranking,
                        "val_accuracy": None if acc is None or used is None else acc * (1.0 + used)}
        return out

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


def _spread(idx: np.ndarray, key: np.ndarray, k: int) -> np.ndarray:
    """``k`` of ``idx`` evenly spaced along ``key`` (ends included)."""
    if k <= 0 or not len(idx):
        return idx[:0]
    ordered = idx[np.argsort(key[idx], kind="stable")]
    if k >= len(ordered):
        return ordered
    return ordered[np.unique(np.round(np.linspace(0, len(ordered) - 1, k)).astype(int))]
