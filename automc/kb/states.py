"""The states of a search run and of an evaluation, declared once: both kinds of record use the same four."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """``RUNNING`` while its owner works; then ``COMPLETE``, ``FAILED`` (the work itself failed, e.g. a method
    refused a step) or ``INTERRUPTED`` (cut short by Ctrl-C, a disk error or a dead process: resume does it again)."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"


ENDED = (State.COMPLETE, State.FAILED, State.INTERRUPTED)
# A step that counts as evaluated (one unit of a search's budget); an INTERRUPTED one is evaluated again.
EVALUATED = (State.COMPLETE, State.FAILED)
