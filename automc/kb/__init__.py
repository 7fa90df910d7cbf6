"""The knowledge base: schema, store interface, backends and named queries."""

from __future__ import annotations

import os
from pathlib import Path

from automc.errors import ValidationError
from automc.kb.records import GraphBatch, TaskFeatures
from automc.kb.schema import SCHEMA_VERSION
from automc.kb.store import Store

__all__ = ["GraphBatch", "SCHEMA_VERSION", "Store", "TaskFeatures", "default_store_uri", "open_store"]


def default_store_uri() -> str:
    """``AUTOMC_STORE``, else a LadybugDB directory in the user's data directory."""
    if os.environ.get("AUTOMC_STORE"):
        return os.environ["AUTOMC_STORE"]
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"ladybug://{base / 'automc' / 'kb.lbug'}"


def open_store(uri: str | Store | None = None) -> Store:
    """Open ``ladybug://PATH`` (or a bare path), ``neo4j://HOST:PORT`` / ``bolt://...``, or pass a Store through."""
    if isinstance(uri, Store):
        return uri
    uri = uri or default_store_uri()
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "ladybug", uri
    if scheme == "ladybug":
        from automc.kb._ladybug import LadybugStore

        if not rest:
            raise ValidationError("ladybug:// needs a path, e.g. ladybug://./kb", field="store")
        return LadybugStore(rest)
    if scheme in ("neo4j", "neo4j+s", "neo4j+ssc", "bolt", "bolt+s", "bolt+ssc"):
        from automc.kb._neo4j import Neo4jStore

        return Neo4jStore(uri)
    raise ValidationError(f"unknown store scheme {scheme!r}; use ladybug://PATH or neo4j://HOST:PORT", field="store")
