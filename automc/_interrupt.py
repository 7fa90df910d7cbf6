"""A user's Ctrl-C that no library can swallow: the signal is remembered, and ``check()`` raises it again.

Some libraries catch everything around their own calls (Torch-Pruning's ``build_dependency`` wraps its tracing
forward in a bare ``except``), so a ``KeyboardInterrupt`` raised inside them is lost. Inside ``catching()`` the
SIGINT handler records the interrupt before raising it, and the long loops (the fine-tune loop, the search loop)
call ``check()`` after each library call, which raises it again until the context ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_requested = False


def requested() -> bool:
    """True once Ctrl-C was pressed inside ``catching()``."""
    return _requested


def check() -> None:
    """Raise ``KeyboardInterrupt`` when Ctrl-C was pressed, even if the ``KeyboardInterrupt`` itself was caught."""
    if _requested:
        raise KeyboardInterrupt


def _handler(signum: int, frame: Any) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def catching() -> Iterator[None]:
    """Remember SIGINT for ``check()`` while the block runs (main thread only; elsewhere a no-op)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # started in the background with Ctrl-C ignored: keep it so
        yield
        return
    _requested = False
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False
