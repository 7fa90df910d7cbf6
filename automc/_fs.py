"""File-system checks run before any work: an output folder must be one this process can create and write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from automc.errors import ValidationError


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """``path`` must be a directory, or creatable as one, that this process can write; nothing is left behind.

    Tries a temporary file in ``path`` or its nearest existing ancestor (``os.access`` says yes to root on a
    read-only mount); raises ``ValidationError`` naming ``flag`` and the path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValidationError(f"{p} exists and is not a directory", field=flag)
    probe = p.absolute()
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link: mkdir would meet it as an existing name
            raise ValidationError(f"{p} cannot be created: {probe} is a broken symbolic link", field=flag)
        probe = probe.parent
    if not probe.is_dir():
        raise ValidationError(f"{p} cannot be created: {probe} is not a directory", field=flag)
    try:
        fd, name = tempfile.mkstemp(prefix=".automc-probe-", dir=probe)
    except OSError as e:
        what = "is not writable" if probe == p.absolute() else f"cannot be created in {probe}"
        raise ValidationError(f"{p} {what}: {e.strerror or e}", field=flag) from None
    os.close(fd)
    os.unlink(name)
    return p
