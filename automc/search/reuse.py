"""Reuse across tasks: what a search learns from the store before it starts.

``load_prior`` turns the complete search evaluations of *other* tasks into F_mo's warm-start steps (each with its
task's feature vector, so similar tasks weigh in) and picks the first proposals (``transfer``): the best schemes
the most similar past searches found, then the best-rated single strategies of the experience of the most similar
task in the KB (the project's measured experience, ``automc-measured``; a published source weighted by its
agreement with measured results, ``embed.agreement``, so the paper's tables, which rank our methods the other way,
count nothing). ``ensure_embeddings`` returns the strategy embeddings, re-fitting them first when the knowledge they
learn from (R1-R5 triples, experiences) changed since the last ``automc kb embed``.

Search evaluations do not count as knowledge for the embeddings (``Store.content_version`` ignores them): the
embeddings learn from the graph and from published experience, and ``embed.fit`` never reads evaluations, so a
re-fit after a search would reproduce the same vectors at a cost of tens of seconds. Evaluations reach the next
search through F_mo instead, which is trained on them directly.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from automc._num import finite
from automc.catalog import scheme_key, scheme_text
from automc.kb.records import TaskFeatures
from automc.kb.states import State
from automc.kb.store import Store
from automc.search._base import Observation, SchemeKey, StepRecord
from automc.search.pareto import front

SIMILARITY_FEATURES = 7  # the task's own features; the 8th (the run's target) does not make tasks alike


@dataclass(frozen=True)
class Prior:
    """Steps of other tasks for F_mo, and front schemes of the most similar past tasks for transfer."""

    records: tuple[StepRecord, ...] = ()
    tasks: int = 0  # other tasks whose steps are in ``records``
    evaluations: int = 0  # other tasks' evaluations read
    transfer: tuple[SchemeKey, ...] = ()
    similar: tuple[str, ...] = ()  # the past tasks transfer came from, most similar first
    experience: tuple[SchemeKey, ...] = ()  # of ``transfer``, the ones from the KB's experience
    skipped: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The summary a search reports as ``reuse``."""
        return {"evaluations": self.evaluations, "tasks": self.tasks}


def experience_proposals(store: Store, task: TaskFeatures | Sequence[float] | None, target_pr: float, space: Any, *,
                         k: int = 5, pr_window: float = 0.05) -> list[SchemeKey]:
    """Up to ``k`` one-step schemes of the search space that reach ``target_pr``: the methods' strategies with the
    best weighted accuracy change in the experience of the KB task most similar to ``task`` whose reduction lies
    within ``pr_window`` of ``target_pr``; each as its grid strategy when it is one, else the method's grid strategy
    at share 1 with the experience's grid values (the rest at the grid's middle)."""
    from automc.embed.agreement import experience_weight, store_source_weights

    if task is None:
        return []
    current = task_vector(task, None) if isinstance(task, TaskFeatures) else tuple(task)
    weights = store_source_weights(store)
    by_task: dict[str, list[tuple[float, str, dict]]] = defaultdict(list)
    features: dict[str, tuple[float, ...]] = {}
    for r in store.named("experience-rows"):
        ar, pr = finite(r.get("ar")), finite(r.get("pr"))
        weight = experience_weight(weights, r.get("source"))
        if ar is None or pr is None or abs(pr - float(target_pr)) > pr_window or weight <= 0 or not r.get("method"):
            continue
        try:
            settings = dict(json.loads(r.get("settings") or "{}"))
        except (ValueError, TypeError):
            continue
        features.setdefault(str(r["task"]), _row_vector(r))
        by_task[str(r["task"])].append((weight * ar, str(r["method"]), settings))
    out: list[SchemeKey] = []
    for t in similar_tasks(current, features, 1):
        for _, method, settings in sorted(by_task[t], key=lambda x: (-x[0], x[1])):
            key = _grid_scheme(space, method, settings)
            if key and key not in out:
                out.append(key)
            if len(out) >= k:
                break
    return out


def _grid_scheme(space: Any, method: str, settings: Mapping[str, Any]) -> SchemeKey | None:
    """The one-step feasible scheme of ``method`` closest to ``settings`` in the space's grid, or None."""
    grid = space.catalog.methods[method].grid if method in space.catalog.methods else None
    if grid is None:
        return None
    chosen = {h: v for h, v in settings.items() if h in grid and v in grid[h] and h != "target_ratio_factor"}
    if "target_ratio_factor" in grid:
        chosen["target_ratio_factor"] = 1.0
    text = f"{method}(" + ", ".join(f"{h}={v}" for h, v in sorted(chosen.items())) + ")"
    try:
        key = space.parse(text)
    except Exception:  # noqa: BLE001 - a grid without a share-1 value: no one-step scheme of this method
        return None
    return key if space.feasible(key) else None


def task_vector(task: TaskFeatures, target_pr: float | None) -> tuple[float, ...]:
    """A task's feature vector as F_mo sees it (``automc.embed.experience.FEATURES``: logs of counts and sizes,
    NaN where unknown); StepRecords of every task use the same function."""
    from automc.embed.experience import task_feature_vector

    row = dict(zip(task.__dataclass_fields__, task.values(), strict=True))
    return tuple(task_feature_vector({**row, "target_pr": target_pr}))


def _row_vector(row: Mapping[str, Any]) -> tuple[float, ...]:
    """The task features of a ``search-steps`` row with the run's target (never the reached PR)."""
    from automc.embed.experience import task_feature_vector

    return tuple(task_feature_vector({k: v for k, v in row.items() if k != "pr"}))


def _steps(rows: Sequence[Mapping[str, Any]], skipped: dict[str, int]) -> list[StepRecord]:
    """StepRecords of evaluation rows; a row without stored step effects takes them from its parent's row in the
    same run (``skipped`` counts the rows that cannot be used)."""
    by_run = {(r["task"], r["search_run"], r["scheme"] or ""): r for r in rows}
    out = []
    for r in rows:
        key = scheme_key(r["scheme"])
        if not key:
            continue  # the base model: no step
        ar, pr = finite(r.get("step_ar")), finite(r.get("step_pr"))
        if ar is None or pr is None:
            parent = by_run.get((r["task"], r["search_run"], scheme_text(key[:-1])))
            pa, pp = (finite(parent.get("val_accuracy")), finite(parent.get("eval_params"))) if parent else (None,
                                                                                                            None)
            ca, cp = finite(r.get("val_accuracy")), finite(r.get("eval_params"))
            if pa and pp and ca is not None and cp is not None:
                ar, pr = ca / pa - 1.0, 1.0 - cp / pp
            elif len(key) == 1 and pr is None and finite(r.get("pr")) is not None:
                pr = finite(r.get("pr"))  # the base model's reduction is 0, so the step's is the scheme's
        if ar is None or pr is None:
            skipped["no_step_effect"] = skipped.get("no_step_effect", 0) + 1
            continue
        out.append(StepRecord(key[:-1], key[-1], str(r["task"]), _row_vector(r), ar, pr))
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    """Columns to zero mean, unit spread (constant columns to 0); unknown (NaN) values to the mean."""
    with np.errstate(all="ignore"):
        known = ~np.isnan(x)
        n = np.maximum(known.sum(0), 1)
        mean = np.where(known, x, 0.0).sum(0) / n
        std = np.sqrt(np.where(known, (x - mean) ** 2, 0.0).sum(0) / n)
    z = (x - mean) / np.where(std > 1e-9, std, 1.0)
    return np.nan_to_num(z, nan=0.0)


def similar_tasks(current: Sequence[float], others: Mapping[str, Sequence[float]], k: int) -> list[str]:
    """The ``k`` tasks of ``others`` nearest to ``current`` (Euclidean on standardised features; ties by id)."""
    if not others or k <= 0:
        return []
    names = sorted(others)
    x = np.array([list(current)[:SIMILARITY_FEATURES]]
                 + [list(others[t])[:SIMILARITY_FEATURES] for t in names], dtype=float)
    z = _standardise(x)
    dist = np.sqrt(((z[1:] - z[0]) ** 2).sum(1))
    order = sorted(range(len(names)), key=lambda i: (round(float(dist[i]), 12), names[i]))
    return [names[i] for i in order[:k]]


def load_prior(store: Store, task_id: str, *, task: TaskFeatures | None = None, k: int = 2, per_task: int = 5,
               fidelity: str = "search", target_pr: float | None = None, space: Any = None) -> Prior:
    """Steps of every other task's complete ``fidelity`` evaluations; the best schemes (PR at least their target)
    of the ``k`` tasks most similar to ``task`` (read from the store by ``task_id`` when not given), then, with
    ``target_pr`` and ``space``, the experience's best one-step schemes (``experience_proposals``)."""
    rows = store.named("search-steps", {"exclude": task_id, "fidelity": fidelity})
    skipped: dict[str, int] = {}
    records = _steps(rows, skipped)
    # Transfer: rank the other tasks by similarity, then take each one's front above its target.
    features: dict[str, tuple[float, ...]] = {}
    by_task: dict[str, list[Observation]] = defaultdict(list)
    for r in rows:
        features.setdefault(str(r["task"]), _row_vector(r))
        key = scheme_key(r["scheme"])
        acc, pr, target = finite(r.get("val_accuracy")), finite(r.get("pr")), finite(r.get("target_pr"))
        if key and acc is not None and pr is not None and (target is None or pr >= target):
            by_task[str(r["task"])].append(Observation(key, State.COMPLETE, acc, pr, evaluation_id=str(r["id"])))
    if task is not None:
        current: Sequence[float] | None = task_vector(task, None)
    else:
        found = store.named("task", {"task": task_id})
        current = _row_vector(found[0]) if found else None
    similar = similar_tasks(current, {t: f for t, f in features.items() if by_task.get(t)}, k) if current else []
    transfer: list[SchemeKey] = []
    for t in similar:
        best = sorted(front(by_task[t]), key=lambda o: (-o.val_accuracy, o.scheme))[:per_task]
        transfer.extend(o.scheme for o in best if o.scheme not in transfer)
    experience: list[SchemeKey] = []
    if target_pr is not None and space is not None and current is not None:
        experience = [key for key in experience_proposals(store, current, target_pr, space, k=per_task)
                      if key not in transfer]
    return Prior(records=tuple(records), tasks=len({r.task for r in records}), evaluations=len(rows),
                 transfer=tuple(transfer) + tuple(experience), similar=tuple(similar), skipped=skipped,
                 experience=tuple(experience))


def ensure_embeddings(store: Store, *, refresh: bool, config: Any = None) -> tuple[dict[str, list[float]], dict]:
    """Strategy embeddings; with ``refresh``, re-fit and write them first when the store's content version differs
    from the latest EmbeddingRun's (or none exists). ``info`` says whether it re-fitted, why, and in how long."""
    runs = store.named("embedding-runs")
    latest = max(runs, key=lambda r: (r["created"] or "", r["id"])) if runs else None
    info: dict[str, Any] = {"refreshed": False, "kb_version": latest["kb_version"] if latest else None}
    if refresh:
        from automc.kb.store import content_fingerprint

        started = time.perf_counter()
        triples = store.kg_triples()
        version = content_fingerprint(triples, store.named("experience-rows"))  # = store.content_version()
        info["check_seconds"] = round(time.perf_counter() - started, 3)
        if not triples:  # nothing to embed (no 'automc kb init'): F_mo uses its hand-made strategy vectors
            info["reason"] = "the store has no knowledge graph"
            return store.embeddings("Strategy"), info
        stale = latest is None or latest["kb_version"] != version
        info["reason"] = "no embeddings yet" if latest is None else (
            "the knowledge base changed since the last embedding" if stale else "up to date")
        if stale:
            from automc.embed.train import fit

            started = time.perf_counter()
            result = fit(store, config)
            info.update(refreshed=True, seconds=round(time.perf_counter() - started, 3), kb_version=result.kb_version,
                        run_id=result.run_id)
    return store.embeddings("Strategy"), info
