"""A search's view of stored evaluations (``search_rows``, ``observation``).

The ``SearchRun`` writes and reads are ``Store`` methods (``automc.kb.runs.RunStore``); the functions below them
only delegate, for callers not yet moved to the methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from automc.catalog import scheme_key
from automc.kb.records import RunRecord, TaskFeatures
from automc.kb.states import EVALUATED
from automc.kb.store import Store
from automc.search._base import Observation

__all__ = ["RunRecord", "claim_run", "create_run", "end_evaluation", "fail_running", "list_runs", "load_run",
           "observation", "run_evaluations", "search_rows", "update_run"]


def search_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows that count as evaluated steps: search fidelity, COMPLETE or FAILED (not INTERRUPTED)."""
    return [r for r in rows if r.get("fidelity") == "search" and r.get("state") in EVALUATED]


def observation(row: Mapping[str, Any]) -> Observation:
    """A stored evaluation as a strategy sees it (validation accuracy only, never test accuracy)."""
    def num(k: str) -> float | None:
        return None if row.get(k) is None else float(row[k])

    return Observation(scheme=scheme_key(row.get("scheme")), state=str(row["state"]),
                       val_accuracy=num("val_accuracy"), pr=num("pr"), fr=num("fr"), params=num("params"),
                       flops=num("flops"), round=int(row.get("round") or 0), evaluation_id=str(row["id"]),
                       error=str(row.get("error") or ""))


# -- delegating to the Store methods -------------------------------------------------------------------------

def create_run(store: Store, *, run_id: str, algorithm: str, task: TaskFeatures, seed: int, target_pr: float,
               budget: int, config: Mapping[str, Any], fingerprint: str) -> None:
    """``Store.create_run``."""
    store.create_run(run_id=run_id, algorithm=algorithm, task=task, seed=seed, target_pr=target_pr, budget=budget,
                     config=config, fingerprint=fingerprint)


def update_run(store: Store, run_id: str, **props: Any) -> None:
    """``Store.update_run``."""
    store.update_run(run_id, **props)


def load_run(store: Store, run_id: str) -> RunRecord:
    """``Store.load_run``."""
    return store.load_run(run_id)


def claim_run(store: Store, run_id: str) -> RunRecord:
    """``Store.claim_run``."""
    return store.claim_run(run_id)


def list_runs(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """``Store.list_runs``."""
    return store.list_runs(limit)


def run_evaluations(store: Store, run_id: str) -> list[dict[str, Any]]:
    """``Store.run_evaluations``."""
    return store.run_evaluations(run_id)


def fail_running(store: Store, run_id: str, reason: str) -> int:
    """``Store.interrupt_running``: the run's RUNNING evaluations become INTERRUPTED."""
    return store.interrupt_running(run_id, reason)


def end_evaluation(store: Store, eval_id: str, record: Mapping[str, Any]) -> None:
    """``Store.end_evaluation``."""
    store.end_evaluation(eval_id, record)
