"""LadybugDB backend: an embedded, on-disk, transactional Cypher store (the default)."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from automc.errors import StoreError, StoreLockedError, ValidationError
from automc.kb.schema import ladybug_ddl
from automc.kb.store import Store

_LOCK_RE = re.compile(r"lock", re.I)


class LadybugStore(Store):
    """A store in one LadybugDB file; one process opens it at a time (an OS file lock guards it)."""

    single_writer = True

    def __init__(self, path: str | Path, *, lock_timeout: float | None = None) -> None:
        import ladybug

        self.path = Path(path).expanduser()
        self.uri = f"ladybug://{self.path}"
        if lock_timeout is None:
            raw = os.environ.get("AUTOMC_LOCK_TIMEOUT", "60")
            if not re.fullmatch(r"\s*\d+(\.\d*)?\s*", raw):
                raise ValidationError(f"must be a number of seconds ≥ 0, got {raw!r}", field="AUTOMC_LOCK_TIMEOUT")
            lock_timeout = float(raw)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                self._db = ladybug.Database(str(self.path))
                break
            except RuntimeError as e:
                if not _LOCK_RE.search(str(e)):
                    raise StoreError(f"cannot open {self.uri}: {_first_line(e)}") from e
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"store {self.path} is locked by another process ({_holder(e)}); waited "
                        f"{lock_timeout:.0f} s: retry when it finishes or raise AUTOMC_LOCK_TIMEOUT") from None
                time.sleep(0.2)
        self._conn = ladybug.Connection(self._db)
        self._depth = 0
        self._checked_open()

    def _run(self, query: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            result = self._conn.execute(query, dict(params or {}))
        except RuntimeError as e:
            raise StoreError(_first_line(e)) from e
        results = result if isinstance(result, list) else [result]
        rows: list[dict[str, Any]] = []
        for res in results:
            cols = res.get_column_names()
            while res.has_next():
                rows.append(dict(zip(cols, res.get_next(), strict=True)))
        return rows

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._run("BEGIN TRANSACTION")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            with contextlib.suppress(Exception):
                self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._run("COMMIT")

    def close(self) -> None:
        self._close_handles("_conn", "_db")

    def _cast(self, expr: str, typ: str) -> str:
        return f"CAST({expr} AS {typ})"

    def _ddl(self) -> list[str]:
        return ladybug_ddl()

    def _is_empty(self) -> bool:
        return not self._run("CALL show_tables() RETURN name")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _holder(e: BaseException) -> str:
    m = re.search(r"PID \d+", str(e))
    return m.group(0) if m else "another process"
