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
