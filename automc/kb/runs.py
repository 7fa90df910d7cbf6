"""Search runs in the store: the ``SearchRun`` writes and reads, and the step order of their evaluations.

Mixed into ``Store``, so every backend shares one meaning: each method is one transaction at most, written
through the store's own primitives (``write``, ``_run``, ``transaction``) with parameterised queries.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from automc.errors import NotFoundError, ValidationError
from automc.kb.owner import now, owner, parse_time, stale_reason
from automc.kb.records import GraphBatch, RunRecord, TaskFeatures
from automc.kb.schema import NODE
from automc.kb.states import ENDED, State

if TYPE_CHECKING:
    from automc.kb.store import Store

_JSON_PROPS = ("config", "front", "strategy_state")
# What schema versions 1 and 2 wrote for an evaluation that did not complete: one state, FAIL, where an error
# starting with one of these words meant cut short rather than failed: a search step (evaluated again on resume:
# "interrupted", "stale") or an ``automc compress --store`` stopped by Ctrl-C or its disk.
_V2_FAIL = "FAIL"
_V2_CUT_SHORT = ("interrupted", "stale", "KeyboardInterrupt", "DiskError")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class RunStore:
    """``Store`` methods for search runs and their evaluations."""

    def create_run(self: Store, *, run_id: str, algorithm: str, task: TaskFeatures, seed: int, target_pr: float,
                   budget: int, config: Mapping[str, Any], fingerprint: str) -> None:
        """Write a RUNNING ``SearchRun`` owned by this process, its task and ``RUN_ON_TASK``, in one transaction."""
        batch = GraphBatch()
        task_key = batch.task(task)
        batch.node("SearchRun", id=run_id, algorithm=algorithm, config=json.dumps(config, sort_keys=True),
                   state=State.RUNNING, started=now(), task=task_key, seed=int(seed), target_pr=float(target_pr),
                   budget=int(budget), front="[]", strategy_state="{}", round=-1, seconds=0.0,
                   fingerprint=fingerprint, error="", **owner())
        batch.rel("RUN_ON_TASK", run_id, task_key)
        self.write(batch)

    def update_run(self: Store, run_id: str, **props: Any) -> None:
        """Set properties of a run (JSON-encoding ``config``/``front``/``strategy_state``) and refresh its owner;
        an ended state also stamps ``finished`` unless given. Raises ``ValueError`` for an unknown property."""
        bad = sorted(set(props) - set(NODE["SearchRun"].names))
        if bad:
            raise ValueError(f"SearchRun has no property {bad[0]!r}")
        out = {k: json.dumps(v, sort_keys=True) if k in _JSON_PROPS and not isinstance(v, str) else v
               for k, v in props.items()}
        if out.get("state") in ENDED:
            out.setdefault("finished", now())
        batch = GraphBatch()
        batch.node("SearchRun", id=run_id, **owner(), **out)
        self.write(batch)

    def load_run(self: Store, run_id: str) -> RunRecord:
        """The stored run; raises ``NotFoundError`` naming the command that lists runs."""
        cols = ", ".join(f"r.{n} AS {n}" for n in NODE["SearchRun"].names)  # schema constants only
        rows = self._run(f"MATCH (r:SearchRun {{id: $id}}) RETURN {cols}", {"id": run_id})
        if not rows:
            raise NotFoundError(f"no search run {run_id!r} in {self.uri} ('automc runs' lists them)")
        r = rows[0]
        decoded = {k: json.loads(r[k]) if r.get(k) else None for k in _JSON_PROPS}
        return RunRecord(
            id=r["id"], algorithm=r["algorithm"] or "", state=r["state"] or "", task=r["task"] or "",
            seed=int(r["seed"] or 0), target_pr=float(r["target_pr"] or 0.0), budget=int(r["budget"] or 0),
            config=decoded["config"] or {}, front=decoded["front"] or [],
            strategy_state=decoded["strategy_state"] or {}, round=-1 if r["round"] is None else int(r["round"]),
            seconds=float(r["seconds"] or 0.0), fingerprint=r["fingerprint"] or "", started=r["started"] or "",
            finished=r["finished"], host=r["host"] or "", pid=r["pid"], heartbeat=r["heartbeat"] or "",
            error=r["error"] or "")

    def claim_run(self: Store, run_id: str) -> RunRecord:
        """Make this process the owner of a stored run (state RUNNING), atomically; returns the run as it was.

        The read and the write are one transaction that first locks the run's node (a no-op write), so of two
        processes resuming the same run, the second sees the first's claim. Raises ``ValidationError`` naming the
        live owner when another process runs it (same host: its pid exists; other hosts: a fresh heartbeat).
        """
        with self.transaction():
            self._run("MATCH (r:SearchRun {id: $id}) SET r.heartbeat = r.heartbeat", {"id": run_id})
            run = self.load_run(run_id)
            mine = run.host == socket.gethostname() and run.pid == os.getpid()
            row = {"host": run.host, "pid": run.pid, "heartbeat": run.heartbeat, "started": run.started}
            if run.state == State.RUNNING and not mine and run.pid and stale_reason(row) is None:
                raise ValidationError(f"search run {run_id} is in use by process {run.pid} on {run.host or 'a host'} "
                                      f"(heartbeat {run.heartbeat or 'unknown'}); wait for it to finish or stop it",
                                      field="--resume")
            self.update_run(run_id, state=State.RUNNING, error="", finished=None)
        return run

    def list_runs(self: Store, limit: int = 100) -> list[dict[str, Any]]:
        """Runs, newest first, with evaluated steps, best validation accuracy at PR >= gamma and strategy options."""
        rows = self.named("search-runs", {"limit": limit})
        ids = [r["id"] for r in rows]
        found = self._run("MATCH (r:SearchRun) WHERE r.id IN $ids RETURN r.id AS id, r.config AS config",
                          {"ids": ids}) if ids else []
        configs = {r["id"]: r["config"] for r in found}
        for row in rows:
            row["options"] = _options(configs.get(row["id"]))
        return rows

    def run_evaluations(self: Store, run_id: str) -> list[dict[str, Any]]:
        """Every evaluation of the run (search and final fidelity; any state), in the run's step order."""
        return self.named("run-evaluations", {"run": run_id})

    def interrupt_running(self: Store, run_id: str, reason: str) -> int:
        """Mark the run's RUNNING evaluations INTERRUPTED with ``reason`` (one transaction); returns how many."""
        with self.transaction():
            ids = [r["id"] for r in self._run(
                "MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(:SearchRun {id: $run}) WHERE e.state = $s RETURN e.id AS id",
                {"run": run_id, "s": State.RUNNING})]
            if ids:
                self._run("UNWIND $ids AS i MATCH (e:Evaluation {id: i}) SET e.state = $s, e.error = $err, "
                          "e.finished = $t", {"ids": ids, "s": State.INTERRUPTED, "err": reason[:2000], "t": now()})
        return len(ids)

    def end_evaluation(self: Store, eval_id: str, record: Mapping[str, Any]) -> None:
        """Finish a RUNNING evaluation by ``record['state']``: COMPLETE with its measurements, INTERRUPTED, or else
        FAILED with ``record['error']`` (keeping its timing and ``step``, so the run's training share and order
        stay right); one transaction."""
        state = record.get("state")
        if state == State.COMPLETE:
            self.finish_evaluation(eval_id, record)
        elif state == State.INTERRUPTED:
            self.interrupt_evaluation(eval_id, str(record.get("error") or "interrupted"), record)
        else:
            self.fail_evaluation(eval_id, str(record.get("error") or "failed"), record)

    def upgrade_records(self: Store) -> None:
        """Bring records an older automc wrote up to this schema, in one transaction; idempotent.

        Evaluations in state FAIL (schema versions 1 and 2) become INTERRUPTED when their error says they were cut
        short (``interrupted...``, ``stale...``, a compress's ``KeyboardInterrupt``/``DiskError``), else FAILED;
        a run's evaluations without a ``step`` are numbered after its others, in the order versions 1 and 2 read
        them (round, start time, scheme length, text, id). ``kb import`` of an older export runs it too.
        """
        with self.transaction():
            for prefix in _V2_CUT_SHORT:
                self._run("MATCH (e:Evaluation) WHERE e.state = $old AND e.error STARTS WITH $p SET e.state = $new",
                          {"old": _V2_FAIL, "p": prefix, "new": State.INTERRUPTED})
            self._run("MATCH (e:Evaluation) WHERE e.state = $old SET e.state = $new",
                      {"old": _V2_FAIL, "new": State.FAILED})
            rows = self._run(
                "MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(r:SearchRun) WHERE e.step IS NULL "
                "OPTIONAL MATCH (e)-[:EVAL_OF_SCHEME]->(s:Scheme) RETURN r.id AS run, e.id AS id, e.round AS round, "
                "e.created AS created, s.length AS length, s.text AS scheme")
            if not rows:
                return
            runs = sorted({r["run"] for r in rows})
            top = {r["run"]: r["top"] for r in self._run(
                "MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(r:SearchRun) WHERE r.id IN $runs AND e.step IS NOT NULL "
                "RETURN r.id AS run, max(e.step) AS top", {"runs": runs})}
            nxt = {run: 0 if top.get(run) is None else int(top[run]) + 1 for run in runs}
            numbered = []
            for r in sorted(rows, key=_v2_order):
                numbered.append({"id": r["id"], "step": nxt[r["run"]]})
                nxt[r["run"]] += 1
            self._run("UNWIND $rows AS row MATCH (e:Evaluation {id: row.id}) SET e.step = row.step",
                      {"rows": numbered})


def _v2_order(row: Mapping[str, Any]) -> tuple:
    """Sort key of an evaluation without a ``step``: the order ``run-evaluations`` of version 2 read a run in.

    Nulls sort last, as both backends order them. A finished search step's ``created`` is its start to the
    microsecond; a stamp to the second (a step cut short, a final fine-tune) may have started at any time in that
    second, and is taken as its end: such a record was the last in flight, not the first.
    """
    stamp = parse_time(row.get("created"))
    if stamp is not None and "." not in str(row.get("created")):
        stamp += _dt.timedelta(seconds=1) - _dt.timedelta(microseconds=1)
    return (row.get("round") is None, row.get("round") or 0, stamp is None, stamp or _EPOCH,
            row.get("length") is None, row.get("length") or 0, row.get("scheme") or "", row["id"])


def _options(config: str | None) -> dict[str, Any]:
    """The strategy options in a run's stored config JSON ({} for runs from before options, or a bad config)."""
    try:
        options = json.loads(config or "{}").get("config", {}).get("strategy_options")
    except (ValueError, AttributeError):
        return {}
    return dict(options) if isinstance(options, Mapping) else {}
