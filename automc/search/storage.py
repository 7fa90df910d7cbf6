"""Search runs in the store: write and update a ``SearchRun``, read it back, and rebuild a run's history.

Every function takes an open ``Store`` and does one transaction at most; the search loop opens the store only
around these calls, so an embedded store stays usable by others while a model trains.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from automc.catalog import scheme_key
from automc.errors import NotFoundError
from automc.kb.records import GraphBatch, TaskFeatures
from automc.kb.schema import NODE
from automc.kb.store import Store, now, owner
from automc.search._base import Observation

RUN_STATES = ("RUNNING", "COMPLETE", "FAILED", "INTERRUPTED")
_JSON_PROPS = ("config", "front", "strategy_state")
# A FAIL with one of these errors was cut short (Ctrl-C, a killed process), not refused by a method: resume
# evaluates the scheme again instead of treating it as failed.
CUT_SHORT = ("interrupted", "stale")


@dataclass(frozen=True)
class RunRecord:
    """A ``SearchRun`` as stored; ``config``, ``front`` and ``strategy_state`` decoded from JSON."""

    id: str
    algorithm: str
    state: str
    task: str
    seed: int
    target_pr: float
    budget: int
    config: dict[str, Any] = field(default_factory=dict)
    front: list[dict[str, Any]] = field(default_factory=list)
    strategy_state: dict[str, Any] = field(default_factory=dict)
    round: int = -1  # the last round whose strategy state was stored; -1 before the first
    seconds: float = 0.0
    fingerprint: str = ""
    started: str = ""
    finished: str | None = None
    host: str = ""
    pid: int | None = None
    heartbeat: str = ""
    error: str = ""


def create_run(store: Store, *, run_id: str, algorithm: str, task: TaskFeatures, seed: int, target_pr: float,
               budget: int, config: Mapping[str, Any], fingerprint: str) -> None:
    """Write a RUNNING ``SearchRun`` owned by this process, its task and ``RUN_ON_TASK``, in one transaction."""
    batch = GraphBatch()
    task_key = batch.task(task)
    batch.node("SearchRun", id=run_id, algorithm=algorithm, config=json.dumps(config, sort_keys=True),
               state="RUNNING", started=now(), task=task_key, seed=int(seed), target_pr=float(target_pr),
               budget=int(budget), front="[]", strategy_state="{}", round=-1, seconds=0.0,
               fingerprint=fingerprint, error="", **owner())
    batch.rel("RUN_ON_TASK", run_id, task_key)
    store.write(batch)


def update_run(store: Store, run_id: str, **props: Any) -> None:
    """Set properties of a run (JSON-encoding ``config``/``front``/``strategy_state``) and refresh its owner."""
    names = NODE["SearchRun"].names
    bad = sorted(set(props) - set(names))
    if bad:
        raise ValueError(f"SearchRun has no property {bad[0]!r}")
    out = {k: json.dumps(v, sort_keys=True) if k in _JSON_PROPS and not isinstance(v, str) else v
           for k, v in props.items()}
    if out.get("state") in ("COMPLETE", "FAILED", "INTERRUPTED"):
        out.setdefault("finished", now())
    batch = GraphBatch()
    batch.node("SearchRun", id=run_id, **owner(), **out)
    store.write(batch)


def load_run(store: Store, run_id: str) -> RunRecord:
    """The stored run; raises ``NotFoundError`` naming the command that lists runs."""
    cols = ", ".join(f"r.{n} AS {n}" for n in NODE["SearchRun"].names)
    rows = store.query(f"MATCH (r:SearchRun {{id: $id}}) RETURN {cols}", {"id": run_id})
    if not rows:
        raise NotFoundError(f"no search run {run_id!r} in {store.uri} ('automc runs' lists them)")
    r = rows[0]
    decoded = {k: json.loads(r[k]) if r.get(k) else None for k in _JSON_PROPS}
    return RunRecord(
        id=r["id"], algorithm=r["algorithm"] or "", state=r["state"] or "", task=r["task"] or "",
        seed=int(r["seed"] or 0), target_pr=float(r["target_pr"] or 0.0), budget=int(r["budget"] or 0),
        config=decoded["config"] or {}, front=decoded["front"] or [], strategy_state=decoded["strategy_state"] or {},
        round=-1 if r["round"] is None else int(r["round"]), seconds=float(r["seconds"] or 0.0),
        fingerprint=r["fingerprint"] or "", started=r["started"] or "", finished=r["finished"],
        host=r["host"] or "", pid=r["pid"], heartbeat=r["heartbeat"] or "", error=r["error"] or "")


def claim_run(store: Store, run_id: str) -> RunRecord:
    """Make this process the owner of a stored run (state RUNNING), atomically; returns the run as it was.

    The read and the write are one transaction that first locks the run's node (a no-op write), so of two
    processes resuming the same run, the second sees the first's claim. Raises ``ValidationError`` naming the
    live owner when another process runs it (same host: its pid exists; other hosts: a fresh heartbeat).
    """
    import datetime as _dt

    from automc.errors import ValidationError
    from automc.kb.store import STALE_AFTER_S, _stale_reason

    with store.transaction():
        store.query("MATCH (r:SearchRun {id: $id}) SET r.heartbeat = r.heartbeat", {"id": run_id})
        run = load_run(store, run_id)
        mine = run.host == socket.gethostname() and run.pid == os.getpid()
        row = {"host": run.host, "pid": run.pid, "heartbeat": run.heartbeat, "started": run.started}
        if run.state == "RUNNING" and not mine and run.pid and _stale_reason(
                row, socket.gethostname(), _dt.datetime.now(_dt.UTC), STALE_AFTER_S) is None:
            raise ValidationError(f"search run {run_id} is in use by process {run.pid} on {run.host or 'a host'} "
                                  f"(heartbeat {run.heartbeat or 'unknown'}); wait for it to finish or stop it",
                                  field="--resume")
        update_run(store, run_id, state="RUNNING", error="", finished=None)
    return run


def list_runs(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """Runs, newest first, with evaluated steps, best validation accuracy at PR >= gamma and strategy options."""
    rows = store.named("search-runs", {"limit": limit})
    ids = [r["id"] for r in rows]
    configs = {r["id"]: r["config"] for r in store.query(
        "MATCH (r:SearchRun) WHERE r.id IN $ids RETURN r.id AS id, r.config AS config", {"ids": ids})} if ids else {}
    for row in rows:
        row["options"] = _options(configs.get(row["id"]))
    return rows


def _options(config: str | None) -> dict[str, Any]:
    """The strategy options in a run's stored config JSON ({} for runs from before options, or a bad config)."""
    try:
        options = json.loads(config or "{}").get("config", {}).get("strategy_options")
    except (ValueError, AttributeError):
        return {}
    return dict(options) if isinstance(options, Mapping) else {}


def run_evaluations(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every evaluation of the run (base, search and final fidelity; any state), in evaluation order."""
    return store.named("run-evaluations", {"run": run_id})


def cut_short(row: Mapping[str, Any]) -> bool:
    """A FAIL that an interruption caused (its scheme is evaluated again on resume)."""
    return row.get("state") == "FAIL" and str(row.get("error") or "").startswith(CUT_SHORT)


def search_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows that count as evaluated steps: search fidelity, COMPLETE or FAIL, not cut short."""
    return [r for r in rows if r.get("fidelity") == "search" and r.get("state") in ("COMPLETE", "FAIL")
            and not cut_short(r)]


def observation(row: Mapping[str, Any]) -> Observation:
    """A stored evaluation as a strategy sees it (validation accuracy only, never test accuracy)."""
    def num(k: str) -> float | None:
        return None if row.get(k) is None else float(row[k])

    return Observation(scheme=scheme_key(row.get("scheme")), state=str(row["state"]),
                       val_accuracy=num("val_accuracy"), pr=num("pr"), fr=num("fr"), params=num("params"),
                       flops=num("flops"), round=int(row.get("round") or 0), evaluation_id=str(row["id"]),
                       error=str(row.get("error") or ""))


def fail_running(store: Store, run_id: str, reason: str) -> int:
    """Mark the run's RUNNING evaluations FAIL with ``reason`` (one transaction); returns how many."""
    rows = [r for r in run_evaluations(store, run_id) if r["state"] == "RUNNING"]
    if not rows:
        return 0
    batch = GraphBatch()
    for r in rows:
        batch.node("Evaluation", id=r["id"], state="FAIL", error=reason[:2000], finished=now())
    store.write(batch)
    return len(rows)


def end_evaluation(store: Store, eval_id: str, record: Mapping[str, Any]) -> None:
    """Finish a RUNNING evaluation with its measurements: COMPLETE, or FAIL with ``record['error']`` (the FAIL
    keeps its timing, so the run's training share stays right); one transaction."""
    if record.get("state") == "COMPLETE":
        store.finish_evaluation(eval_id, record)
    else:
        store.fail_evaluation(eval_id, str(record.get("error") or "failed"), record)


# TEMPORARY (lead's local shim until the Store methods land from wt-kb; never committed)
def _shim() -> None:
    from automc.kb.states import State

    def _set(self, eid, state, error, result=None):
        from automc.kb.store import _evaluation_props
        props = {k: v for k, v in _evaluation_props(result or {}).items() if k != "steps"}
        b = GraphBatch()
        b.node("Evaluation", id=eid, **props, state=state, error=str(error)[:2000], finished=now())
        self.write(b)

    def _interrupt_running(self, run_id, why):
        for r in run_evaluations(self, run_id):
            if r["state"] == "RUNNING":
                _set(self, r["id"], "INTERRUPTED", why)

    Store.load_run = load_run
    Store.run_evaluations = run_evaluations
    Store.claim_run = claim_run
    Store.create_run = create_run
    Store.update_run = lambda self, run_id, **p: update_run(self, run_id, **{k: (str(v) if isinstance(v, State) else v) for k, v in p.items()})
    Store.interrupt_running = _interrupt_running
    Store.interrupt_evaluation = lambda self, eid, why: _set(self, eid, "INTERRUPTED", why)
    Store.fail_evaluation = lambda self, eid, why, result=None: _set(self, eid, "FAILED", why, result)
    Store.list_runs = list_runs
    Store.end_evaluation = end_evaluation


_shim()
