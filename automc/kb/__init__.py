"""The knowledge base: schema, store interface, backends and named queries."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from automc.errors import AutomcError, NotFoundError, SchemaVersionError, ValidationError
from automc.kb.owner import STALE_AFTER_S
from automc.kb.records import GraphBatch, RunRecord, TaskFeatures
from automc.kb.schema import SCHEMA_VERSION
from automc.kb.states import State
from automc.kb.store import Store, _NeedsUpgrade

__all__ = ["GraphBatch", "RunRecord", "SCHEMA_VERSION", "State", "Store", "TaskFeatures", "default_store_uri",
           "heartbeat_callback", "open_store", "sweep_stale"]


def default_store_uri() -> str:
    """``AUTOMC_STORE``, else a LadybugDB directory in the user's data directory."""
    if os.environ.get("AUTOMC_STORE"):
        return os.environ["AUTOMC_STORE"]
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"ladybug://{base / 'automc' / 'kb.lbug'}"


def open_store(uri: str | Store | None = None, *, create: bool = True, read_only: bool = False,
               repair: bool = False, lock_timeout: float | None = None) -> Store:
    """Open ``ladybug://PATH`` (or a bare path), ``neo4j://HOST:PORT`` / ``bolt://...``, or pass a Store through.

    ``create=False`` (and ``read_only``) refuse a store that does not exist yet with ``NotFoundError``
    ("no knowledge base at PATH"); ``read_only`` lets the engine refuse every write; ``repair`` recreates missing
    schema tables, columns and the version node (``automc kb init``). Opening writes nothing, except the in-place
    upgrade of a store an older automc wrote (stale records are marked by ``sweep_stale`` / ``Store.fail_stale``).
    """
    if isinstance(uri, Store):
        return uri
    uri = uri or default_store_uri()
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "ladybug", uri
        # "ladybug:/kb", "neo4j:host", "::::": a mistyped URI, not a file name to create.
        first = Path(uri).parts[0] if Path(uri).parts else ""
        if ":" in first:
            raise ValidationError(f"{uri!r} is not a store URI; use ladybug://PATH or neo4j://HOST:PORT",
                                  field="store")
    if scheme == "ladybug":
        from automc.kb._ladybug import LadybugStore

        if not rest:
            raise ValidationError("ladybug:// needs a path, e.g. ladybug://./kb", field="store")
        if "\0" in rest:
            raise ValidationError("the store path contains a NUL byte", field="store")
        try:
            store: Store = LadybugStore(rest, create=create, read_only=read_only, repair=repair,
                                        lock_timeout=lock_timeout)
        except SchemaVersionError as e:
            if not (read_only and isinstance(e, _NeedsUpgrade)):
                raise
            # An older schema: one read-write open upgrades it in place (additive), then read as asked.
            LadybugStore(rest, create=False, lock_timeout=lock_timeout).close()
            store = LadybugStore(rest, create=False, read_only=True, lock_timeout=lock_timeout)
    elif scheme in ("neo4j", "neo4j+s", "neo4j+ssc", "bolt", "bolt+s", "bolt+ssc"):
        from automc.kb._neo4j import Neo4jStore

        store = Neo4jStore(uri, create=create, read_only=read_only, repair=repair)
    else:
        raise ValidationError(f"unknown store scheme {scheme!r}; use ladybug://PATH or neo4j://HOST:PORT",
                              field="store")
    return store


def sweep_stale(uri: str | None = None, max_age_s: float = STALE_AFTER_S) -> list[str]:
    """Mark the RUNNING records whose owner is gone INTERRUPTED (``Store.fail_stale``); their ids. A store that does
    not exist yet has none (and is not created). A search calls this once at its start."""
    try:
        store = open_store(uri, create=False)
    except NotFoundError:
        return []
    with store:
        return store.fail_stale(max_age_s)


def heartbeat_callback(uri: str, eval_id: str, progress: Callable[[str], None] | None = None, *,
                       every_s: float = 30.0) -> Callable[[str], None]:
    """A progress callback that also refreshes ``eval_id``'s heartbeat (at most every ``every_s`` seconds).

    The store is opened only for the moment of the write, so long work holds no lock; a busy store skips a beat.
    """
    last = [time.monotonic()]

    def beat(msg: str) -> None:
        if progress is not None:
            progress(msg)
        if time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        with contextlib.suppress(AutomcError), open_store(uri, create=False, lock_timeout=1.0) as s:
            s.heartbeat(eval_id)

    return beat
