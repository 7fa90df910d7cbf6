"""The store interface: one Cypher-speaking base class that owns the semantics, small backends below it.

Contract (every backend): each ``write`` and each evaluation update is one transaction (all or nothing);
upserts MERGE on natural keys, so writing the same thing twice changes nothing; query text is parameterised
(only schema constants are ever formatted into it); driver errors surface as ``StoreError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

from automc.catalog import Catalog, Scheme, Strategy, setting_id
from automc.errors import NotFoundError, SchemaVersionError, StoreError, ValidationError
from automc.kb import queries
from automc.kb.owner import STALE_AFTER_S, now, owner, stale_reason
from automc.kb.records import GraphBatch, TaskFeatures
from automc.kb.runs import RunStore
from automc.kb.schema import KG_RELATIONS, NODE, NODES, REL, RELS, SCHEMA_VERSION
from automc.kb.states import State

_BATCH = 5000
# Schema versions ensure_schema upgrades in place: new columns and tables (nothing removed), then the records'
# own upgrade (``RunStore.upgrade_records``: version 2's FAIL state split into FAILED and INTERRUPTED, step numbers).
# Versions 4 and 5 only add columns: an older store gets them the same way (at an unchanged version it would not).
UPGRADABLE = (1, 2, 3, 4)
# Statements that read or write host files, fetch extensions or touch engine state rather than the graph. A
# read-only engine still runs some of them (LadybugDB: COPY ... TO, LOAD FROM, EXPORT DATABASE, INSTALL; Neo4j:
# LOAD CSV, apoc.load.*), so read-only queries refuse them; the words are matched outside strings and comments.
_HOST_ACCESS = re.compile(r"\b(COPY|LOAD|EXPORT|IMPORT|INSTALL|UNINSTALL|CHECKPOINT|ATTACH)\b", re.I)
_LITERALS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|//[^\n]*|/\*.*?(?:\*/|$)", re.S)


class Store(RunStore, ABC):
    """A knowledge-graph store. Subclasses provide a connection layer; everything else lives here (search runs in
    ``RunStore``)."""

    uri: str
    read_only: bool = False  # opened so that the engine refuses writes
    created: bool = False  # this open created the store
    _create: bool = True  # an empty store may get the schema (kb init, kb import, compress/search --store)

    # -- connection layer (backends) -------------------------------------------------------------------------
    @abstractmethod
    def _run(self, query: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one parameterised query (inside the open transaction, if any); rows as dicts."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Commit on success, roll back on any exception, raise driver errors as ``StoreError``."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (and the embedded store's lock)."""

    @abstractmethod
    def _cast(self, expr: str, typ: str) -> str:
        """Cypher expression converting ``expr`` to the schema type ``typ`` (nulls stay null)."""

    @abstractmethod
    def _ddl(self) -> list[str]:
        """Statements creating the schema (idempotent)."""

    @abstractmethod
    def _is_empty(self) -> bool:
        """True when the database holds no automc schema at all."""

    def discard(self) -> None:
        """Close; a backend that created its store in this open also deletes it (embedded stores only)."""
        self.close()

    def _checked_open(self, *, repair: bool = False) -> None:
        """Backends call this last in ``__init__``: check the schema, and never leak a connection on failure."""
        try:
            self.ensure_schema(repair=repair)
        except BaseException:
            self.close()
            raise

    def _close_handles(self, *names: str) -> None:
        """Close and forget driver handles, innermost first; closing twice is harmless."""
        for name in names:
            handle = self.__dict__.pop(name, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------------------------------
    def ensure_schema(self, *, repair: bool = False) -> None:
        """Create the schema in an empty store, upgrade an older one, or check the stored version.

        ``repair`` (``automc kb init``) also recreates missing tables, columns and the version node. Raises
        ``NotFoundError`` (empty store that may not be created) or ``SchemaVersionError``.
        """
        if self._is_empty():
            if self.read_only or not self._create:
                raise NotFoundError(f"no knowledge base at {self.uri} (run automc kb init)")
            self._apply_schema()
            return
        found = self.schema_version()
        if found == SCHEMA_VERSION and not repair:
            missing = self._missing_tables()
            if not missing:
                return
            raise SchemaVersionError(f"store {self.uri} lacks table(s) {', '.join(missing)}: "
                                     f"run 'automc kb init' to repair it")
        if found in UPGRADABLE or (repair and (found is None or found <= SCHEMA_VERSION)):
            if self.read_only:
                raise _NeedsUpgrade(f"store {self.uri} has schema version {found}: run 'automc kb init' to "
                                    f"upgrade it in place")
            self._apply_schema()
            return
        if found is None:
            raise SchemaVersionError(f"store {self.uri} has no valid schema version (damaged, or not written by "
                                     f"automc): run 'automc kb init' to repair it")
        raise SchemaVersionError(
            f"store {self.uri} has schema version {found}, this automc needs {SCHEMA_VERSION}: "
            f"run 'automc kb export' with the automc that wrote it, then 'automc kb import' into a new store")

    def _apply_schema(self) -> None:
        """Idempotent: create missing tables, add missing columns, upgrade older records, then record the version
        (last, so a crash part-way leaves an old or missing version that the next open or ``kb init`` finishes)."""
        for stmt in self._ddl():
            self._run(stmt)
        for spec in (*NODES, *RELS):
            name = spec.label if hasattr(spec, "label") else spec.name
            have = self._columns(name)
            if have is None:
                continue
            for col, typ in spec.properties:
                if col not in have:
                    self._add_column(name, col, typ)
        self.upgrade_records()
        self._write("MERGE (m:Meta {key: $k}) SET m.value = $v", {"k": "schema_version", "v": str(SCHEMA_VERSION)})

    def schema_version(self) -> int | None:
        """The stored schema version, or None when the version node is missing or unreadable."""
        try:
            rows = self._run("MATCH (m:Meta {key: $k}) RETURN m.value AS v", {"k": "schema_version"})
            return int(rows[0]["v"]) if rows else None
        except (StoreError, TypeError, ValueError):
            return None

    def _missing_tables(self) -> list[str]:
        have = self._tables()
        if have is None:
            return []
        return [n for n in (*(n.label for n in NODES), *(r.name for r in RELS)) if n not in have]

    # Schema introspection; schemaless backends (Neo4j) keep these defaults.
    def _tables(self) -> set[str] | None:
        return None

    def _columns(self, table: str) -> set[str] | None:
        return None

    def _add_column(self, table: str, name: str, typ: str) -> None:
        raise NotImplementedError

    def _write(self, query: str, params: Mapping[str, Any] | None = None) -> None:
        """Run one write statement as its own transaction."""
        with self.transaction():
            self._run(query, params)

    # -- reads -----------------------------------------------------------------------------------------------
    def query(self, cypher: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a user's Cypher query with parameters; rows as dicts.

        On a read-only store the engine refuses writes, and statements that reach host files, extensions or engine
        state (COPY, LOAD, EXPORT, IMPORT, INSTALL, CHECKPOINT, ATTACH) raise ``ValidationError``.
        """
        if self.read_only:
            word = _HOST_ACCESS.search(_LITERALS.sub(" ", cypher))
            if word:
                raise ValidationError(f"{word.group(1).upper()} reaches files or engine state outside the graph; "
                                      f"read-only queries may not use it (add --write to allow)", field="query")
        return self._run(cypher, dict(params or {}))

    def named(self, name: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a named query from ``automc.kb.queries``; raises ``NotFoundError`` or ``ValidationError``."""
        q = queries.get(name)
        return self._run(q.text, q.bind(params or {}))

    def stats(self) -> dict[str, dict[str, int]]:
        """Node count per label and relationship count per type (labels are schema constants)."""
        nodes = {n.label: self._run(f"MATCH (n:{n.label}) RETURN count(n) AS c")[0]["c"] for n in NODES}
        rels = {r.name: self._run(f"MATCH (:{r.src})-[x:{r.name}]->(:{r.dst}) RETURN count(x) AS c")[0]["c"]
                for r in RELS}
        nodes.pop("Meta", None)
        return {"nodes": nodes, "relationships": rels}

    # -- writes ----------------------------------------------------------------------------------------------
    def write(self, batch: GraphBatch) -> None:
        """Upsert a batch of nodes then relationships, all in one transaction."""
        with self.transaction():
            for node in NODES:
                rows = list(batch.nodes.get(node.label, {}).values())
                for keys, group in _group_by_keys(rows):
                    self._upsert_nodes(node.label, keys, group)
            for rel in RELS:
                rows = list(batch.rels.get(rel.name, {}).values())
                for keys, group in _group_by_keys(rows):
                    self._upsert_rels(rel.name, keys, group)

    # A backend whose store has a single writer (LadybugDB's file lock) may look up what exists and CREATE the rest,
    # which is several times faster than MERGE; with concurrent writers (Neo4j) MERGE keeps upserts race-free.
    single_writer: bool = False

    def _upsert_nodes(self, label: str, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        node = NODE[label]
        bad = set(keys) - set(node.names)
        if bad:
            raise StoreError(f"{label} has no property {sorted(bad)[0]!r}")
        types = dict(node.properties)
        props = [k for k in keys if k != node.key]
        for i in range(0, len(rows), _BATCH):
            chunk = _coerce(rows[i:i + _BATCH], types)
            if self.single_writer:
                cols = "".join(f", n.{k} AS {k}" for k in props)
                found = {r["__k"]: r for r in self._run(
                    f"UNWIND $keys AS k MATCH (n:{label} {{{node.key}: k}}) RETURN n.{node.key} AS __k{cols}",
                    {"keys": [r[node.key] for r in chunk]})}
                new = [r for r in chunk if r[node.key] not in found]
                chunk = [r for r in chunk if r[node.key] in found
                         and any(found[r[node.key]][k] != r[k] for k in props)]
                if new:
                    cols = ", ".join(f"{k}: {self._expr(k, types[k], new)}" for k in keys)
                    self._run(f"UNWIND $rows AS row CREATE (n:{label} {{{cols}}})", {"rows": new})
                if not chunk:
                    continue
            sets = ", ".join(f"n.{k} = {self._expr(k, types[k], chunk)}" for k in props)
            q = (f"UNWIND $rows AS row MERGE (n:{label} {{{node.key}: row.{node.key}}})"
                 + (f" SET {sets}" if sets else ""))
            self._run(q, {"rows": chunk})

    def _upsert_rels(self, name: str, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        rel = REL[name]
        src, dst = NODE[rel.src], NODE[rel.dst]
        types = {**dict(rel.properties), "src": "STRING", "dst": "STRING"}
        bad = set(keys) - set(types)
        if bad:
            raise StoreError(f"{name} has no property {sorted(bad)[0]!r}")
        props = [k for k in keys if k not in ("src", "dst", rel.key)]
        # Two MATCH clauses, not one comma pattern: LadybugDB plans the latter as a much slower join.
        ends = (f"UNWIND $rows AS row MATCH (a:{rel.src} {{{src.key}: row.src}}) "
                f"MATCH (b:{rel.dst} {{{dst.key}: row.dst}}) ")
        for i in range(0, len(rows), _BATCH):
            chunk = _coerce(rows[i:i + _BATCH], types)
            ident = f" {{{rel.key}: {self._expr(rel.key, types[rel.key], chunk)}}}" if rel.key else ""
            if self.single_writer and not props:
                kcol = f", r.{rel.key} AS k" if rel.key else ""
                # Expand from the looked-up sources only: matching both ends makes LadybugDB join.
                found = {(r["s"], r["d"], r.get("k")) for r in self._run(
                    f"UNWIND $srcs AS s MATCH (a:{rel.src} {{{src.key}: s}})-[r:{name}]->(b:{rel.dst}) "
                    f"RETURN a.{src.key} AS s, b.{dst.key} AS d{kcol}",
                    {"srcs": sorted({r["src"] for r in chunk})})}
                new = [r for r in chunk if (r["src"], r["dst"], r.get(rel.key) if rel.key else None) not in found]
                if new:
                    self._run(ends + f"CREATE (a)-[r:{name}{ident}]->(b)", {"rows": new})
                continue
            sets = ", ".join(f"r.{k} = {self._expr(k, types[k], chunk)}" for k in props)
            self._run(ends + f"MERGE (a)-[r:{name}{ident}]->(b)" + (f" SET {sets}" if sets else ""), {"rows": chunk})

    def _expr(self, key: str, typ: str, chunk: list[dict[str, Any]]) -> str:
        """``row.key``; cast only when the whole chunk is null there (the driver cannot infer a type then)."""
        expr = f"row.{key}"
        return self._cast(expr, typ) if all(r[key] is None for r in chunk) else expr

    # -- catalogue -------------------------------------------------------------------------------------------
    def write_catalog(self, catalog: Catalog) -> None:
        """Write methods, techniques, hyperparameters, settings and every grid strategy with R1-R5."""
        self.write(catalog_batch(catalog))

    def strategies(self, method: str | None = None, *, in_catalog: bool = True) -> list[dict[str, Any]]:
        """Strategy rows (id, method, settings dict, embedding or None)."""
        rows = self._run(
            "MATCH (s:Strategy) WHERE ($m = '' OR s.method = $m) AND ($c = false OR s.in_catalog = true) "
            "RETURN s.id AS id, s.method AS method, s.settings AS settings, s.embedding AS embedding "
            "ORDER BY s.id", {"m": method or "", "c": in_catalog})
        for r in rows:
            r["settings"] = json.loads(r["settings"])
        return rows

    def kg_triples(self) -> list[tuple[str, str, str]]:
        """All R1-R5 triples as (head key, relation, tail key), in a stable order."""
        out: list[tuple[str, str, str]] = []
        for name in KG_RELATIONS:
            rel = REL[name]
            hk, tk = NODE[rel.src].key, NODE[rel.dst].key
            rows = self._run(f"MATCH (a:{rel.src})-[:{name}]->(b:{rel.dst}) RETURN a.{hk} AS h, b.{tk} AS t")
            out.extend(sorted((r["h"], name, r["t"]) for r in rows))
        return out

    # -- embeddings ------------------------------------------------------------------------------------------
    def set_embeddings(self, label: str, vectors: Mapping[str, list[float]], run: Mapping[str, Any]) -> str:
        """Store ``embedding`` on nodes of ``label`` and an EmbeddingRun record, in one transaction."""
        if "embedding" not in NODE[label].names:
            raise StoreError(f"{label} nodes carry no embedding")
        run_id = str(run.get("id") or uuid.uuid4().hex[:16])
        batch = GraphBatch()
        for key, vec in vectors.items():
            batch.node(label, **{NODE[label].key: key, "embedding": [float(x) for x in vec]})
        batch.node("EmbeddingRun", id=run_id, created=run.get("created", now()),
                   kb_version=str(run.get("kb_version", "")), config=json.dumps(run.get("config", {})),
                   metrics=json.dumps(run.get("metrics", {})))
        self.write(batch)
        return run_id

    def embeddings(self, label: str = "Strategy") -> dict[str, list[float]]:
        key = NODE[label].key
        rows = self._run(f"MATCH (n:{label}) WHERE n.embedding IS NOT NULL RETURN n.{key} AS k, n.embedding AS e")
        return {r["k"]: r["e"] for r in rows}

    def content_version(self) -> str:
        """A fingerprint of what embeddings learn from: every R1-R5 triple and every experience's values."""
        return content_fingerprint(self.kg_triples(), self.named("experience-rows"))

    # -- evaluations -----------------------------------------------------------------------------------------
    def start_evaluation(self, task: TaskFeatures, scheme: Scheme, *, target_pr: float | None = None,
                         search_run: str | None = None, device: str = "",
                         extra: Mapping[str, Any] | None = None) -> str:
        """Record a RUNNING evaluation of ``scheme`` on ``task`` (with the scheme and task) and return its id.

        The record names its owner (host, process id, heartbeat) so a later writer can tell a stale one;
        ``extra`` adds Evaluation properties (fidelity, round, parent, ``step``: its index in the run's order, ...).
        """
        eval_id = uuid.uuid4().hex
        batch = scheme_batch(scheme)
        task_key = batch.task(task)
        props = {k: v for k, v in (extra or {}).items() if k in NODE["Evaluation"].names and k != "id"}
        batch.node("Evaluation", **props, id=eval_id, state=State.RUNNING, search_run=search_run, target_pr=target_pr,
                   device=device, created=now(), **owner())
        batch.rel("EVAL_OF_SCHEME", eval_id, scheme.id)
        batch.rel("EVAL_ON_TASK", eval_id, task_key)
        if search_run:
            batch.rel("EVAL_IN_RUN", eval_id, search_run)
        self.write(batch)
        return eval_id

    def heartbeat(self, eval_id: str) -> None:
        """Refresh a RUNNING evaluation's heartbeat (long work calls this now and then)."""
        self._write("MATCH (e:Evaluation {id: $id}) SET e.heartbeat = $t", {"id": eval_id, "t": now()})

    def finish_evaluation(self, eval_id: str, result: Mapping[str, Any]) -> None:
        """Mark an evaluation COMPLETE with its measurements (its own ``state``/``finished``/``error`` entries are
        ignored); raises ``NotFoundError``."""
        self._check_eval(eval_id)
        props = _evaluation_props(result)
        if "steps" in props and not isinstance(props["steps"], str):
            props["steps"] = json.dumps(props["steps"])
        batch = GraphBatch()
        batch.node("Evaluation", id=eval_id, **props, state=State.COMPLETE, finished=now())
        self.write(batch)

    def fail_evaluation(self, eval_id: str, error: str, result: Mapping[str, Any] | None = None) -> None:
        """Mark an evaluation FAILED (the work itself failed, e.g. a method refused the step) with ``error``, keeping
        what ``result`` measured before it failed (timing); raises ``NotFoundError``."""
        self._end_evaluation(eval_id, State.FAILED, error, result)

    def interrupt_evaluation(self, eval_id: str, reason: str, result: Mapping[str, Any] | None = None) -> None:
        """Mark an evaluation INTERRUPTED: cut short (Ctrl-C, a disk error, a dead process), not its own failure, so
        a resumed search evaluates it again; raises ``NotFoundError``."""
        self._end_evaluation(eval_id, State.INTERRUPTED, reason, result)

    def _end_evaluation(self, eval_id: str, state: State, error: str, result: Mapping[str, Any] | None) -> None:
        self._check_eval(eval_id)
        props = {k: v for k, v in _evaluation_props(result or {}).items() if k != "steps"}
        batch = GraphBatch()
        batch.node("Evaluation", id=eval_id, **props, state=state, error=error[:2000], finished=now())
        self.write(batch)

    def _check_eval(self, eval_id: str) -> None:
        if not self._run("MATCH (e:Evaluation {id: $id}) RETURN e.id AS id", {"id": eval_id}):
            raise NotFoundError(f"no evaluation {eval_id!r} in {self.uri}")

    def evaluations(self, *, task: str | None = None, search_run: str | None = None,
                    state: str | None = State.COMPLETE) -> list[dict[str, Any]]:
        """Evaluations (with their scheme text and task id), oldest first."""
        # Empty strings, not nulls: LadybugDB cannot type a null parameter.
        return self.named("evaluations", {"task": task or "", "run": search_run or "", "state": state or ""})

    def fail_stale(self, max_age_s: float = STALE_AFTER_S) -> list[str]:
        """Mark RUNNING evaluations and search runs INTERRUPTED when their owner is gone; their ids.

        Gone means: the owning process no longer exists (same host), or no heartbeat for ``max_age_s`` seconds
        (another host, or no owner recorded). The error reads ``stale: <why>``. Nothing else calls this: opening a
        store writes nothing; a search sweeps once at its start, and ``automc kb stale`` on demand.
        """
        stale: list[tuple[str, str, str]] = []
        for label, started in (("Evaluation", "created"), ("SearchRun", "started")):
            rows = self._run(f"MATCH (e:{label}) WHERE e.state = $s RETURN e.id AS id, e.host AS host, e.pid AS pid, "
                             f"e.heartbeat AS heartbeat, e.{started} AS started", {"s": State.RUNNING})
            for r in rows:
                why = stale_reason(r, max_age_s)
                if why:
                    stale.append((label, r["id"], f"stale: {why}"))
        if stale:
            with self.transaction():
                for label, key, error in stale:
                    self._run(f"MATCH (e:{label} {{id: $id}}) WHERE e.state = $old "
                              f"SET e.state = $new, e.error = $err, e.finished = $t",
                              {"id": key, "old": State.RUNNING, "new": State.INTERRUPTED, "err": error, "t": now()})
        return [key for _, key, _ in stale]


class _NeedsUpgrade(SchemaVersionError):
    """An older schema version that a read-write open upgrades in place."""


def _evaluation_props(result: Mapping[str, Any]) -> dict[str, Any]:
    """The Evaluation properties in ``result``, less those the store sets itself (id, state, finished, error)."""
    return {k: result[k] for k in NODE["Evaluation"].names
            if k in result and k not in ("id", "state", "finished", "error")}


def content_fingerprint(triples: list[tuple[str, str, str]], experience_rows: list[dict[str, Any]]) -> str:
    """``Store.content_version`` of already-read triples and ``experience-rows``, so a reader need not read twice."""
    digest = hashlib.sha256()
    for triple in triples:
        digest.update("\x1f".join(triple).encode() + b"\n")
    for row in experience_rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()[:16]


_PY_TYPES = {"DOUBLE": float, "INT64": int, "BOOLEAN": bool, "STRING": str}


def _coerce(rows: list[dict[str, Any]], types: Mapping[str, str]) -> list[dict[str, Any]]:
    """Values in the schema's Python types, so the driver infers the right column types without casts."""
    out = []
    for r in rows:
        c = {}
        for k, v in r.items():
            if v is None:
                c[k] = None
            elif types[k] == "DOUBLE[]":
                c[k] = [float(x) for x in v]
            else:
                c[k] = _PY_TYPES[types[k]](v)
        out.append(c)
    return out


def _group_by_keys(rows: list[dict[str, Any]]) -> Iterator[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(sorted(r)), []).append(r)
    yield from groups.items()


def catalog_batch(catalog: Catalog) -> GraphBatch:
    """The whole catalogue as graph changes: E1-E5 nodes and R1-R5 relationships."""
    b = GraphBatch()
    for name, desc in catalog.techniques.items():
        b.node("Technique", name=name, description=desc)
    for h in catalog.hyperparameters.values():
        b.node("Hyperparameter", name=h.name, description=h.description, type=h.type, domain=json.dumps(h.domain))
    for m in catalog.methods.values():
        b.node("Method", name=m.name, title=m.title, reference=m.reference)
        for t in m.techniques:
            b.rel("USES_TECHNIQUE", m.name, t)
        for hp, values in m.grid.items():
            b.rel("HAS_HYPERPARAMETER", m.name, hp)
            for v in values:
                add_setting(b, hp, v, in_catalog=True)
    for s in catalog.strategies():
        add_strategy(b, s.method, s.settings, in_catalog=True)
    return b


def add_setting(b: GraphBatch, hp: str, value: Any, *, in_catalog: bool) -> str:
    key = setting_id(hp, value)
    # Only the catalogue sets the flag: writing False could demote a setting another method's grid uses.
    flag = {"in_catalog": True} if in_catalog else {}
    seen = b.nodes.get("HyperparameterSetting", {}).get(key)
    if seen is not None:
        seen.update(flag)
        return key
    b.node("HyperparameterSetting", id=key, hyperparameter=hp, value=json.dumps(value), **flag)
    b.rel("HAS_VALUE", hp, key)
    return key


def add_strategy(b: GraphBatch, method: str, settings: tuple[tuple[str, Any], ...], *, in_catalog: bool) -> str:
    key = Strategy(method, settings).id
    flag = {"in_catalog": True} if in_catalog else {}
    seen = b.nodes.get("Strategy", {}).get(key)
    if seen is not None:
        seen.update(flag)
        return key
    b.node("Strategy", id=key, method=method, settings=json.dumps(dict(settings), sort_keys=True), **flag)
    b.rel("HAS_METHOD", key, method)
    for hp, v in settings:
        b.rel("HAS_SETTING", key, setting_id(hp, v))
    return key


def scheme_batch(scheme: Scheme, b: GraphBatch | None = None) -> GraphBatch:
    """A scheme node with its ordered STEP relationships and its chain of prefixes (``EXTENDS``), down to the
    empty scheme that stands for the base model; strategies outside the grid are added."""
    b = b if b is not None else GraphBatch()
    b.node("Scheme", id=scheme.id, text=scheme.text, length=len(scheme))
    for pos, s in enumerate(scheme.strategies):
        for hp, v in s.settings:
            add_setting(b, hp, v, in_catalog=False)
        add_strategy(b, s.method, s.settings, in_catalog=False)
        b.rel("STEP", scheme.id, s.id, position=pos)
    if len(scheme):
        prefix = Scheme(scheme.strategies[:-1])
        if prefix.id not in b.nodes.get("Scheme", {}):
            scheme_batch(prefix, b)
        b.rel("EXTENDS", scheme.id, prefix.id)
    return b
