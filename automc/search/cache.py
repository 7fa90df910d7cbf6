"""The model cache of a search run: the model of every evaluated scheme on disk, least recently used evicted first.

A scheme's model is its parent's model with one more strategy applied, so the evaluator keeps each model here and
rebuilds an evicted or missing one by replaying its steps from the nearest cached ancestor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automc.catalog import scheme_id
from automc.errors import reason

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("automc.search")


class ModelCache:
    """Models of evaluated schemes on disk (one ``<scheme id>.pt`` each: state dict + architecture + meta), at
    most ``max_bytes`` in all, least recently used evicted first. Entries appear by atomic rename, so a crash
    never leaves a half-written one; an entry that does not load, for any reason, is dropped (and logged) and
    reported missing, and a folder removed meanwhile is created again: it is a cache."""

    def __init__(self, directory: str | Path, max_bytes: int = 2 * 2**30, *,
                 base_builder: Callable[[], nn.Module] | None = None) -> None:
        from automc._disk import writing

        self.directory = Path(directory)
        with writing(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.base_builder = base_builder
        self._stuck: set[Path] = set()  # unloadable entries that cannot be removed

    def path(self, key: Sequence[str]) -> Path:
        return self.directory / f"{scheme_id(key)}.pt"

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.path(key).is_file()

    def put(self, key: Sequence[str], model: nn.Module, meta: Mapping[str, Any] | None = None) -> None:
        """Store ``model`` (copied to the CPU) under ``key``, then evict down to the size cap.

        Raises ``DiskError`` when the cache's disk is full or failing (the run stops; never the step's fault).
        """
        import torch

        from automc.compress.saving import describe

        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        entry = {"key": json.dumps(list(key)), "arch": json.dumps(describe(model)),
                 "meta": json.dumps(dict(meta or {})), "state_dict": state}

        def save(f: Any) -> None:
            torch.save(entry, f)

        self._write(self.path(key), save, "wb", ".pt")
        self.evict(keep=self.path(key))

    def put_failure(self, key: Sequence[str], reason: str) -> None:
        """Remember that the step producing ``key`` failed (deterministic for the run's seed: never retried)."""
        text = json.dumps({"key": list(key), "reason": reason})
        self._write(self.directory / f"{scheme_id(key)}.fail", lambda f: f.write(text), "w", ".fail")

    def _write(self, path: Path, write: Callable[[Any], Any], mode: str, suffix: str) -> None:
        """Write ``path`` by atomic rename; a cache folder removed meanwhile is created again (it is a cache)."""
        from automc._disk import writing

        for attempt in range(3):
            try:
                with writing(path):
                    self.directory.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=self.directory)
                    try:
                        with os.fdopen(fd, mode) as f:
                            write(f)
                        os.replace(tmp, path)
                    except BaseException:
                        Path(tmp).unlink(missing_ok=True)
                        raise
                return
            except FileNotFoundError:  # the folder went away between mkdir and rename: once more
                if attempt == 2:
                    raise

    def failure(self, key: Sequence[str]) -> str | None:
        """Why the step producing ``key`` failed, when it did (a missing or unreadable marker: not known here)."""
        try:
            entry = json.loads((self.directory / f"{scheme_id(key)}.fail").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != list(key):
            return None
        return str(entry.get("reason") or "failed")

    def get(self, key: Sequence[str]) -> nn.Module | None:
        """The stored model of ``key`` (CPU, eval mode), or None when absent or unreadable."""
        entry = self.entry(key)
        return None if entry is None else entry[0]

    def entry(self, key: Sequence[str]) -> tuple[nn.Module, dict[str, Any]] | None:
        """The stored model of ``key`` and the ``meta`` it was put with, or None when absent or unreadable."""
        import torch

        from automc.compress.saving import rebuild

        p = self.path(key)
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
            if json.loads(entry["key"]) != list(key):
                return None  # a hash collision: treat as absent
            base = self.base_builder() if self.base_builder else None
            model = rebuild(json.loads(entry["arch"]), base)
            model.load_state_dict(entry["state_dict"], strict=True)
            meta = json.loads(entry["meta"])
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it (truncated, foreign, a pickle): rebuild
            self._drop(p, e)
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(p)  # last access, for LRU eviction
        return model.eval(), meta

    def _drop(self, p: Path, e: BaseException) -> None:
        """Remove an entry that does not load (the caller rebuilds it by replaying its steps) and log it once."""
        try:
            if p.is_dir() and not p.is_symlink():  # a folder in an entry's place: the cache's own name
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError:
            if p in self._stuck:
                return  # logged when first met: it fails the same way at every access
            self._stuck.add(p)
        log.warning("model cache entry %s does not load (%s); dropped, its model is rebuilt from its prefix",
                    p, reason(e))

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last access, bytes, path) of every entry, oldest first."""
        out = []
        for p in self.directory.glob("*.pt"):
            if p.name.startswith(".tmp-"):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used entries until the total fits ``max_bytes`` (``keep`` stays)."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, p in entries:
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size
