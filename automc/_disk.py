"""Telling a full or failing disk under automc's own files (store, model cache, outputs) from anything else.

``writing(path)`` wraps one write of the tool's own: an ``OSError`` for lack of space, a quota, a read-only or
failing disk, or torch's ``RuntimeError`` from ``torch.save`` (``[enforce fail at inline_container.cc]``,
``PytorchStreamWriter failed``: it never says why), becomes one ``DiskError`` naming the file, its file system
and the free space left there. Everything else passes through unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from automc.errors import DiskError

PROBLEMS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EIO: "I/O error", errno.EFBIG: "file too large"}
# Words of strerror() in an engine's message (LadybugDB says "... Error: No space left on device").
_STRERROR = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system", errno.EIO: "input/output error", errno.EFBIG: "file too large"}
_TORCH_WRITE = re.compile(r"enforce fail at inline_container|PytorchStreamWriter failed|file write failed", re.I)
# Below this, a write that failed without saying why failed for lack of space.
LOW_SPACE = 1 << 20


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (its nearest existing folder)."""
    p = Path(path)
    for q in (p, *p.parents):
        with contextlib.suppress(OSError):
            st = os.statvfs(q)
            return st.f_bavail * st.f_frsize
    return None


def mount_point(path: str | Path) -> str:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    p = Path(os.path.abspath(path))
    for q in (p, *p.parents):
        with contextlib.suppress(OSError):
            if q.exists() and os.path.ismount(q):
                return str(q)
    return str(p.anchor or p)


def disk_error(exc: BaseException, path: str | Path | None = None, *, cls: type[DiskError] = DiskError
               ) -> DiskError | None:
    """The ``DiskError`` that ``exc`` (raised writing ``path``) stands for, or None when it is something else."""
    if isinstance(exc, DiskError):
        return exc
    code: int | None = None
    where = path
    if isinstance(exc, OSError) and exc.errno in PROBLEMS:
        code = exc.errno
        where = path or exc.filename
    elif isinstance(exc, OSError | RuntimeError):
        text = str(exc).lower()
        code = next((c for c, words in _STRERROR.items() if words in text), None)
        if code is None and isinstance(exc, RuntimeError) and _TORCH_WRITE.search(str(exc)):
            code = errno.EIO  # torch says neither why nor where; the free space tells
        if code is None:
            return None
    else:
        return None
    where = str(where or "")
    free = free_bytes(where) if where else None
    if code == errno.EIO and free is not None and free < LOW_SPACE:
        code = errno.ENOSPC
    return cls(where, free=free, problem=PROBLEMS[code], errno=code, mount=mount_point(where) if where else None)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a disk failure of the writes inside into one ``DiskError`` naming ``path``."""
    try:
        yield
    except DiskError:
        raise
    except (OSError, RuntimeError) as e:
        err = disk_error(e, path)
        if err is None:
            raise
        raise err from e
