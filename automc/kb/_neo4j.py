"""Neo4j 5 backend through the official driver, for a team sharing one knowledge base."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from automc.errors import StoreError
from automc.kb.schema import neo4j_ddl
from automc.kb.store import Store

_CASTS = {"DOUBLE": "toFloat({})", "INT64": "toInteger({})", "BOOLEAN": "{}", "STRING": "{}", "DOUBLE[]": "{}"}


class Neo4jStore(Store):
    """A store in a Neo4j database; credentials come from arguments or NEO4J_USER / NEO4J_PASSWORD."""

    def __init__(self, uri: str, *, user: str | None = None, password: str | None = None,
                 database: str | None = None, create: bool = True, read_only: bool = False,
                 repair: bool = False) -> None:
        import neo4j

        self.uri = uri
        self.read_only, self._create = read_only, create
        user = user or os.environ.get("NEO4J_USER", "neo4j")
        password = password if password is not None else os.environ.get("NEO4J_PASSWORD", "")
        self._database = database or os.environ.get("NEO4J_DATABASE") or None
        try:
            self._driver = neo4j.GraphDatabase.driver(uri, auth=(user, password))
            self._driver.verify_connectivity()
        except Exception as e:  # the driver raises many types; never echo credentials
            raise StoreError(f"cannot connect to {uri}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        # READ access mode: the server refuses every write in this session's transactions.
        mode = neo4j.READ_ACCESS if read_only else neo4j.WRITE_ACCESS
        self._session = self._driver.session(database=self._database, default_access_mode=mode)
        self._tx: Any = None
        self._checked_open(repair=repair)

    def _run(self, query: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        import neo4j.exceptions

        runner = self._tx if self._tx is not None else self._session
        try:
            return runner.run(query, dict(params or {})).data()
        except neo4j.exceptions.Neo4jError as e:
            raise StoreError(f"{e.code}: {e.message}") from e
        except neo4j.exceptions.DriverError as e:
            raise StoreError(f"{type(e).__name__}: {e}") from e

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._tx is not None:
            yield
            return
        self._tx = self._session.begin_transaction()
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._tx.rollback()
            self._tx = None
            raise
        tx, self._tx = self._tx, None
        try:
            tx.commit()
        except Exception as e:
            raise StoreError(f"commit failed: {e}") from e

    def close(self) -> None:
        self._close_handles("_session", "_driver")

    def _cast(self, expr: str, typ: str) -> str:
        return _CASTS[typ].format(expr)

    def _ddl(self) -> list[str]:
        return neo4j_ddl()

    def _is_empty(self) -> bool:
        return not self._run("MATCH (m:Meta {key: 'schema_version'}) RETURN m.key AS k LIMIT 1")
