"""Errors raised by automc; ``str(e)`` is the one-line message the CLI prints."""

from __future__ import annotations


class AutomcError(Exception):
    """Base class of every error automc raises on purpose."""


class NotFoundError(AutomcError, KeyError):
    """A named thing (method, strategy, query, record) does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "not found"


class StoreError(AutomcError, RuntimeError):
    """The graph store failed; wraps the driver's error."""


class StoreLockedError(StoreError):
    """Another process holds the embedded store's write lock."""


class SchemaVersionError(StoreError):
    """The store was written by an incompatible schema version."""


class ValidationError(AutomcError, ValueError):
    """Bad input, located as precisely as known (file, line, field)."""

    def __init__(self, problem: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.problem, self.path, self.line, self.field = problem, path, line, field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.path, self.line) if p is not None)
        parts = [p for p in (where, self.field) if p]
        return ": ".join([*parts, self.problem])


class ValidationErrors(AutomcError, ValueError):
    """Several validation errors found in one input; nothing was written. ``str`` shows the first ``SHOWN``."""

    SHOWN = 20

    def __init__(self, errors: list[ValidationError], *, more: str = "") -> None:
        self.errors = errors
        self.more = more  # said after the count of errors not shown, e.g. where the whole list is
        super().__init__(str(self))

    def lines(self) -> list[str]:
        """Every error, one line each."""
        return [str(e) for e in self.errors]

    def __str__(self) -> str:
        head = f"{len(self.errors):,} bad row(s); nothing was written"
        shown = [str(e) for e in self.errors[:self.SHOWN]]
        rest = len(self.errors) - len(shown)
        tail = [f"... and {rest:,} more{f' ({self.more})' if self.more else ''}"] if rest else []
        return "\n".join([head, *shown, *tail])


class CompressionError(AutomcError, RuntimeError):
    """A compression method could not do what was asked (target out of reach, training diverged, ...)."""


class DiskError(AutomcError, OSError):
    """Writing one of automc's own files (store, model cache, output) failed: no space, a quota, a read-only or
    failing disk. Never a method's failure: a search stops (INTERRUPTED) and resumes once the disk is fixed."""

    def __init__(self, path: str, *, free: int | None = None, problem: str = "no space left",
                 errno: int | None = None, mount: str | None = None, then: str = "") -> None:
        self.path, self.free, self.problem, self.mount, self.then = str(path), free, problem, mount, then
        super().__init__(errno, problem)

    def __str__(self) -> str:
        free = "" if self.free is None else f" ({_size(self.free)} free)"
        if self.path:
            text = f"{self.problem} on {self.mount or self.path}{free} writing {self.path}"
        else:
            text = f"{self.problem}{free} writing automc's files"
        return f"{text}; {self.then}" if self.then else text

    def __reduce__(self) -> tuple:  # keyword-only arguments: the default pickling would lose them
        return (_rebuild_disk_error, (type(self), self.path, self.free, self.problem, self.errno, self.mount,
                                      self.then))


class StoreDiskError(DiskError, StoreError):
    """The store's own files could not be written (see ``DiskError``): the store cannot record anything now."""


def _rebuild_disk_error(cls: type[DiskError], path: str, free: int | None, problem: str, errno: int | None,
                        mount: str | None, then: str) -> DiskError:
    return cls(path, free=free, problem=problem, errno=errno, mount=mount, then=then)


def _size(n: int) -> str:
    """``12 KiB``, ``3.5 MiB``: a free-space figure for one line."""
    value, unit = float(n), "bytes"
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, u
    return f"{int(value)} {unit}" if unit == "bytes" or value >= 10 else f"{value:.1f} {unit}"


def reason(e: BaseException) -> str:
    """One line saying why something failed: the exception's type and the first line of its message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:500] if text else type(e).__name__
