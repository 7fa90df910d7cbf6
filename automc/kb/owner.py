"""Who owns a RUNNING record (host, process id, heartbeat) and when its owner counts as gone."""

from __future__ import annotations

import datetime as _dt
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# A RUNNING record whose owner cannot be checked (another host) is stale after this long without a heartbeat.
STALE_AFTER_S = 3600.0


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def owner() -> dict[str, Any]:
    """Who is writing: host, process id and a fresh heartbeat (stale detection reads them)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": now()}


def stale_reason(row: Mapping[str, Any], max_age_s: float = STALE_AFTER_S) -> str | None:
    """Why a RUNNING record's owner is gone, or None while it may still be working: its process no longer exists
    (same host), or no heartbeat (else start) for ``max_age_s`` seconds (another host, or no owner recorded)."""
    host = socket.gethostname()
    pid = row.get("pid")
    if row.get("host") == host and isinstance(pid, int) and pid > 0:
        return None if pid_alive(pid) else f"process {pid} on {host} is gone"
    last = parse_time(row.get("heartbeat")) or parse_time(row.get("started"))
    if last is None:
        return "no owner or heartbeat recorded"
    age = (_dt.datetime.now(_dt.UTC) - last).total_seconds()
    if age <= max_age_s:
        return None
    return f"no heartbeat from {row.get('host') or 'an unknown host'} for {age:.0f} s (limit {max_age_s:.0f} s)"


def parse_time(value: Any) -> _dt.datetime | None:
    """An ISO time stamp as an aware datetime (UTC when it names no zone); None when it is not one."""
    try:
        parsed = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.UTC)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
