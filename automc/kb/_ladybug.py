"""LadybugDB backend: an embedded, on-disk, transactional Cypher store (the default).

Crash safety: every committed transaction is checkpointed at once, so the write-ahead log holds at most the
transaction in flight; a process killed while writing that log leaves a torn tail, which the next open drops
(``throw_on_wal_replay_failure=False`` replays every complete record before it, i.e. all committed work).
"""

from __future__ import annotations

import contextlib
import decimal
import os
import random
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from automc.errors import NotFoundError, StoreDiskError, StoreError, StoreLockedError, ValidationError
from automc.kb.schema import ladybug_ddl
from automc.kb.store import Store

_LOCK_RE = re.compile(r"\block", re.I)
_WAL_RE = re.compile(r"\bWAL\b.*corrupt|checksum", re.I)
_RECOVERY_RE = re.compile(r"recovery is pending", re.I)
_IO_RE = re.compile(r"\bIO exception\b", re.I)
_ENGINE_PATH_RE = re.compile(r"\bpath: (\S+)")
# Handles of stores whose disk filled up under a write, kept for the process's life (see ``LadybugStore.close``).
_WEDGED: list[Any] = []
# Files the engine keeps beside the store (write-ahead log, checkpoint shadow pages and locks).
_SIDE_FILES = (".wal", ".shadow", ".wal.checkpoint", ".checkpoint.apply.lock", ".checkpoint.intent.lock")


class LadybugStore(Store):
    """A store in one LadybugDB file; one process opens it at a time (an OS file lock guards it).

    ``read_only`` opens it with the engine's read-only mode (every graph or schema write is refused by the engine);
    ``create=False`` refuses a path that holds no store instead of creating one.
    """

    single_writer = True

    def __init__(self, path: str | Path, *, lock_timeout: float | None = None, create: bool = True,
                 read_only: bool = False, repair: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.uri = f"ladybug://{self.path}"
        self.read_only, self._create = read_only, create
        self.recovered = False  # True when this open dropped the torn tail of a write-ahead log
        if lock_timeout is None:
            lock_timeout = _env_float("AUTOMC_LOCK_TIMEOUT", 60.0)
        if self.path.is_dir():
            raise ValidationError("is a directory, not a LadybugDB store file", path=str(self.path), field="store")
        self.created = not self.path.exists()
        if self.created and (read_only or not create):
            raise NotFoundError(f"no knowledge base at {self.path} (run automc kb init)")
        self._new_dirs = [p for p in self.path.parents if not p.exists()] if self.created else []
        if self.created:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create {self.path}: {e.strerror or e}") from None
        self._db = self._open_db(lock_timeout)
        import ladybug

        self._conn = ladybug.Connection(self._db)
        self._depth = 0
        self._wedged = False  # a write failed for lack of space: the engine cannot be closed safely
        try:
            self._checked_open(repair=repair)
        except BaseException:
            if self.created:
                self.discard()
            raise

    def _open_db(self, lock_timeout: float) -> Any:
        import ladybug

        deadline = time.monotonic() + lock_timeout
        strict, tries, next_finish = True, 0, 0.0
        while True:
            try:
                return ladybug.Database(str(self.path), read_only=self.read_only,
                                        throw_on_wal_replay_failure=strict)
            except RuntimeError as e:
                msg = str(e)
                disk = self._disk_error(e)
                if disk is not None:
                    if self.created:
                        self._remove_files()
                    raise disk from e
                if strict and _WAL_RE.search(msg):
                    # A torn log tail: only the transaction in flight when a writer died. Replay what precedes it.
                    strict, self.recovered = False, True
                    continue
                busy = _LOCK_RE.search(msg) and not _RECOVERY_RE.search(msg)
                who = _holder(e)
                if self.read_only and (_RECOVERY_RE.search(msg) or self._wal_race(msg)):
                    # A writer is checkpointing (or died doing so): wait for it like for a lock, finishing a dead
                    # writer's checkpoint with a read-write open, which a live writer's lock refuses.
                    if _RECOVERY_RE.search(msg) and time.monotonic() >= next_finish:
                        self._finish_checkpoint()
                        next_finish = time.monotonic() + 1.0  # a live writer refused it; try again later
                    busy, who = True, "a writer is checkpointing"
                if not busy:
                    if self.created:
                        self._remove_files()
                    raise StoreError(f"cannot open {self.uri}: {_first_line(e)}") from e
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"store {self.path} is locked by another process ({who}); waited "
                        f"{lock_timeout:.0f} s: retry when it finishes or raise AUTOMC_LOCK_TIMEOUT") from None
                tries += 1
                # Short, jittered waits: a busy writer checkpoints many times a second, and a read gets in between.
                time.sleep(min(0.2 * random.uniform(0.5, 1.0), 0.01 * 2 ** tries,
                               max(0.0, deadline - time.monotonic())))

    def _wal_race(self, msg: str) -> bool:
        """A read-only open read this store's log while a writer's checkpoint truncated it."""
        return "Reading past the end of the file" in msg and f"{self.path}.wal" in msg

    def _finish_checkpoint(self) -> None:
        """Finish a dead writer's checkpoint with a read-write open (a live writer's lock refuses it: wait on)."""
        import ladybug

        try:
            ladybug.Database(str(self.path), throw_on_wal_replay_failure=False).close()
        except RuntimeError as e:
            if _LOCK_RE.search(str(e)):
                return
            raise StoreError(f"cannot open {self.uri}: a checkpoint of a writer that died is unfinished and a "
                             f"read-write open cannot finish it ({_first_line(e)})") from e

    def _run(self, query: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            result = self._conn.execute(query, dict(params or {}))
        except RuntimeError as e:
            disk = self._disk_error(e)
            if disk is not None:
                self._wedged = True
                raise disk from e
            raise StoreError(_first_line(e)) from e
        results = result if isinstance(result, list) else [result]
        rows: list[dict[str, Any]] = []
        for res in results:
            cols = res.get_column_names()
            while res.has_next():
                rows.append(dict(zip(cols, map(_plain, res.get_next()), strict=True)))
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
        # Move the committed transaction into the store file now: the log then never holds more than the
        # transaction in flight, so dropping a torn tail on open can never lose committed work.
        self._run("CHECKPOINT")

    def close(self) -> None:
        if getattr(self, "_wedged", False):
            # After a write-ahead log write failed for lack of space, the engine flushes that log again when the
            # database is closed or collected and, the disk still full, throws from a destructor: the process
            # aborts (std::terminate). Keep the handles for the process's life instead (one extra reference, so
            # not even interpreter shutdown collects them): the failed transaction was never durable, and the
            # file lock goes with the process.
            import ctypes

            for name in ("_conn", "_db"):
                handle = self.__dict__.pop(name, None)
                if handle is not None:
                    ctypes.pythonapi.Py_IncRef(ctypes.py_object(handle))
                    _WEDGED.append(handle)
            return
        self._close_handles("_conn", "_db")

    def _disk_error(self, e: RuntimeError) -> StoreDiskError | None:
        """The engine's I/O failure for lack of space (or a read-only, failing disk) as a ``StoreDiskError``."""
        from automc._disk import LOW_SPACE, disk_error, free_bytes, mount_point

        m = _ENGINE_PATH_RE.search(str(e))
        path = m.group(1) if m else str(self.path)
        err = disk_error(e, path, cls=StoreDiskError)
        if err is None and _IO_RE.search(str(e)):
            # e.g. "Cannot read from file ... numBytesRead: 0" when the store file could not grow
            free = free_bytes(path)
            if free is not None and free < LOW_SPACE:
                import errno

                err = StoreDiskError(path, free=free, errno=errno.ENOSPC, mount=mount_point(path))
        return err

    def discard(self) -> None:
        """Close and delete a store this object created (a failed first import leaves nothing behind)."""
        self.close()
        if self.created:
            self._remove_files()

    def _remove_files(self) -> None:
        for suffix in ("", *_SIDE_FILES):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()
        for d in self._new_dirs:  # innermost first; only folders this open created, and only while empty
            with contextlib.suppress(OSError):
                d.rmdir()

    def _cast(self, expr: str, typ: str) -> str:
        return f"CAST({expr} AS {typ})"

    def _ddl(self) -> list[str]:
        return ladybug_ddl()

    def _is_empty(self) -> bool:
        return not self._run("CALL show_tables() RETURN name")

    def _tables(self) -> set[str] | None:
        return {r["name"] for r in self._run("CALL show_tables() RETURN name")}

    def _columns(self, table: str) -> set[str] | None:
        try:
            return {r["name"] for r in self._run(f"CALL table_info('{table}') RETURN name")}
        except StoreError:
            return None

    def _add_column(self, table: str, name: str, typ: str) -> None:
        self._run(f"ALTER TABLE {table} ADD {name} {typ}")


def _plain(v: Any) -> Any:
    """Engine values as plain JSON-able Python: ``sum()`` of integers arrives as a ``Decimal`` (INT128)."""
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"must be a number of seconds ≥ 0, got {raw!r}", field=name) from None
    if not value >= 0 or value == float("inf"):
        raise ValidationError(f"must be a number of seconds ≥ 0, got {raw!r}", field=name)
    return value


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _holder(e: BaseException) -> str:
    m = re.search(r"PID \d+", str(e))
    return m.group(0) if m else "another process"
