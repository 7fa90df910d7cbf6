"""The states of search runs and evaluations, declared once."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a search run or an evaluation stands."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"
