"""How far each source of experience is trusted: the agreement of its method ranking with the project's own measured
results (``automc-measured``, shipped by ``kb init``). NN_exp weighs each experience by its source's agreement."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from automc._num import finite

if TYPE_CHECKING:
    from automc.kb.store import Store


MEASURED = "automc-measured"  # source prefix of the project's own measured experience (bench/measured_experience.py)


def _condition(source: str) -> str:
    """The measuring conditions a source stands for: a measured row's text before ``: `` (the result file after it
    does not matter, so two files of one experiment form one ranking); a published source's whole text."""
    return source.split(": ", 1)[0] if source.startswith(MEASURED) else source


def source_agreement(rows: Sequence[Mapping[str, Any]], *, min_methods: int = 3) -> dict[str, float]:
    """Each published source's Spearman correlation of its method ranking (accuracy, else AR, per model, dataset
    and target PR) with each measured ranking of the same task, averaged over the pairs that share at least
    ``min_methods`` methods; measured sources are 1; a source no measured result overlaps is absent."""
    from scipy.stats import spearmanr

    groups: dict[tuple[str, tuple], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = finite(r.get("accuracy"))
        value = finite(r.get("ar")) if value is None else value
        target = finite(r.get("target_pr"))
        if value is None or target is None or not r.get("method"):
            continue
        task = (str(r.get("model")), str(r.get("dataset")), round(target, 2))
        groups[(_condition(str(r.get("source") or "")), task)][str(r["method"])].append(value)
    ranking = {k: {m: float(np.mean(v)) for m, v in by.items()} for k, by in groups.items()}
    measured = [(c, t) for c, t in ranking if c.startswith(MEASURED)]
    weights: dict[str, float] = {c: 1.0 for c, _ in measured}
    scores: dict[str, list[float]] = defaultdict(list)
    for (c, t), ours in ranking.items():
        if c.startswith(MEASURED):
            continue
        for mc, mt in measured:
            if mt != t:
                continue
            common = sorted(set(ours) & set(ranking[(mc, mt)]))
            if len(common) < min_methods:
                continue
            rho = spearmanr([ours[m] for m in common], [ranking[(mc, mt)][m] for m in common]).statistic
            if math.isfinite(rho):  # a constant ranking says nothing
                scores[c].append(float(rho))
    weights.update({c: float(np.mean(v)) for c, v in scores.items()})
    return weights


def source_weights(rows: Sequence[Mapping[str, Any]], *, min_methods: int = 3) -> dict[str, float]:
    """How far each source's experience is trusted: its ``source_agreement`` clipped at 0 (a source ranking
    methods against what we measure counts nothing); absent where nothing measured overlaps (callers use 1)."""
    return {c: max(0.0, v) for c, v in source_agreement(rows, min_methods=min_methods).items()}


def experience_weight(weights: Mapping[str, float], source: str | None) -> float:
    """The weight of one experience row's ``source`` (1 where nothing measured overlaps its source)."""
    return weights.get(_condition(source or ""), 1.0)


def store_source_weights(store: Store) -> dict[str, float]:
    """``source_weights`` of the store's experience: what the search and NN_exp weigh published experience by."""
    return source_weights(store.named("experience-sources"))


def experience_weights(store: Store) -> tuple[dict[str, float], dict[str, float]]:
    """Each experience id's weight (its source's) and the weights per source; ``embed.fit`` scales NN_exp's loss
    by the first and records the second in its metrics."""
    rows = store.named("experience-sources")
    weights = source_weights(rows)
    return {str(r["id"]): experience_weight(weights, r.get("source")) for r in rows}, weights
