"""Export the whole knowledge base to a directory of JSON-lines files, and read such a directory back."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from automc.errors import SchemaVersionError, ValidationError
from automc.kb.records import GraphBatch
from automc.kb.schema import NODE, NODES, REL, RELS, SCHEMA_VERSION
from automc.kb.store import UPGRADABLE, Store

FORMAT = "automc-kb-export"
MANIFEST = "manifest.json"


def export_store(store: Store, directory: str | Path) -> dict[str, Any]:
    """Write every node and relationship (all properties) to ``directory``; returns the manifest."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ValidationError("exists and is not a directory; export into a new one", path=str(out))
    if out.exists() and any(out.iterdir()):
        raise ValidationError("directory is not empty; export into a new one", path=str(out))
    if not out.absolute().parent.is_dir():
        raise ValidationError("parent folder does not exist", path=str(out))
    # Write beside the target and rename, so an interrupted export leaves no half-written backup.
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".automc-export-", dir=out.absolute().parent))
    except OSError as e:
        raise ValidationError(f"cannot write here: {e.strerror or e}", path=str(out)) from None
    try:
        for node in NODES:
            if node.label == "Meta":
                continue
            cols = ", ".join(f"n.{p} AS {p}" for p in node.names)
            rows = store.query(f"MATCH (n:{node.label}) RETURN {cols} ORDER BY n.{node.key}")
            _write_jsonl(tmp / f"node.{node.label}.jsonl", rows)
        for rel in RELS:
            sk, dk = NODE[rel.src].key, NODE[rel.dst].key
            cols = "".join(f", r.{p} AS {p}" for p in rel.names)
            rows = store.query(f"MATCH (a:{rel.src})-[r:{rel.name}]->(b:{rel.dst}) "
                               f"RETURN a.{sk} AS src, b.{dk} AS dst{cols} ORDER BY src, dst")
            _write_jsonl(tmp / f"rel.{rel.name}.jsonl", rows)
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "stats": store.stats()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if v is not None}, sort_keys=True) + "\n")


def is_backup(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def read_backup(directory: Path) -> tuple[GraphBatch, int, list[ValidationError]]:
    """Validate an export directory and turn it into one batch; errors name file, line and field."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return GraphBatch(), 0, [ValidationError(f"unreadable manifest: {e}", path=str(directory / MANIFEST))]
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return GraphBatch(), 0, [ValidationError(f"not an {FORMAT} directory", path=str(directory / MANIFEST))]
    if manifest.get("schema_version") not in (*UPGRADABLE, SCHEMA_VERSION):
        raise SchemaVersionError(f"{directory} was exported with schema version {manifest.get('schema_version')}, "
                                 f"this automc reads version {SCHEMA_VERSION}")
    batch, errors, n = GraphBatch(), [], 0
    for path in sorted(directory.glob("*.jsonl")):
        kind, _, name = path.stem.partition(".")
        spec = NODE.get(name) if kind == "node" else REL.get(name) if kind == "rel" else None
        if spec is None:
            errors.append(ValidationError(f"unknown node label or relationship type {name!r}", path=str(path)))
            continue
        allowed = set(spec.names) | ({"src", "dst"} if kind == "rel" else set())
        required = {"src", "dst"} if kind == "rel" else {spec.key}  # type: ignore[union-attr]
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            errors.append(ValidationError(f"cannot read: {getattr(e, 'strerror', None) or e}", path=str(path)))
            continue
        for line, text in enumerate(lines, 1):
            n += 1
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                errors.append(ValidationError(f"invalid JSON: {e.msg}", path=str(path), line=line))
                continue
            if not isinstance(row, dict):
                errors.append(ValidationError("expected a JSON object", path=str(path), line=line))
                continue
            bad = sorted(set(row) - allowed) or sorted(required - set(row))
            if bad:
                what = "unknown" if set(row) - allowed else "missing"
                errors.append(ValidationError(f"{what} property", path=str(path), line=line, field=bad[0]))
                continue
            types = {**dict(spec.properties), "src": "STRING", "dst": "STRING"}
            wrong = next((k for k, v in row.items() if v is not None and not _fits(v, types[k])), None)
            if wrong:
                errors.append(ValidationError(f"expected {types[wrong]}, got {json.dumps(row[wrong])[:40]}",
                                              path=str(path), line=line, field=wrong))
                continue
            if kind == "node":
                batch.node(name, **row)
            else:
                batch.rel(name, row.pop("src"), row.pop("dst"), **row)
    return batch, n, errors


def _fits(value: Any, typ: str) -> bool:
    """Whether a JSON value has the schema type (numbers for DOUBLE, whole numbers for INT64, ...)."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if typ == "DOUBLE":
        return number(value)
    if typ == "INT64":
        return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    if typ == "BOOLEAN":
        return isinstance(value, bool)
    if typ == "DOUBLE[]":
        return isinstance(value, list) and all(number(v) for v in value)
    return isinstance(value, str)
