"""Importers: published results (paper tables, experience records) and KB backups, validated before writing."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from automc.catalog import Catalog, load_catalog
from automc.errors import ValidationError, ValidationErrors
from automc.importers import experience, paper_tables
from automc.importers._common import read_rows
from automc.kb.backup import is_backup, read_backup
from automc.kb.store import Store

__all__ = ["ImportReport", "builtin_measured", "builtin_papers", "import_file", "init_kb"]


@dataclass(frozen=True)
class ImportReport:
    path: str
    format: str
    rows: int
    added: dict[str, int]  # node label or relationship type -> how many new ones


def builtin_papers() -> Path:
    """The AutoMC paper's Tables 2-3, shipped with the package."""
    return Path(str(resources.files("automc.importers").joinpath("data/papers.csv")))


def builtin_measured() -> Path:
    """The project's own measured experience of its methods (``bench/measured_experience.py``), with provenance."""
    return Path(str(resources.files("automc.importers").joinpath("data/automc-measured.csv")))


def import_file(store: Store, path: str | Path, *, catalog: Catalog | None = None) -> ImportReport:
    """Validate a whole file (or export directory) then write it in one transaction; raises ``ValidationErrors``."""
    path = Path(path)
    catalog = catalog or load_catalog()
    if is_backup(path):
        fmt, (batch, n, errors) = "backup", read_backup(path)
    elif path.is_dir() or not path.exists():
        raise ValidationError("no such file (or not an automc export directory)", path=str(path))
    else:
        header, _ = read_rows(path)
        if paper_tables.matches(header):
            fmt, (batch, n, errors) = "paper-tables", paper_tables.parse(path, catalog)
        elif experience.matches(header):
            fmt, (batch, n, errors) = "experience", experience.parse(path, catalog)
        else:
            raise ValidationError(
                f"unrecognised columns ({', '.join(header[:6])}...); expected the paper-tables "
                f"({', '.join(paper_tables.COLUMNS)}) or experience ({', '.join(experience.COLUMNS)}) format",
                path=str(path), line=1)
    if errors:
        raise ValidationErrors(errors)
    before = store.stats()
    with store.transaction():
        store.write(batch)
        if fmt == "backup":  # an export of an older store: its records upgraded as the store's own would be
            store.upgrade_records()
    return ImportReport(str(path), fmt, n, _added(before, store.stats()))


def init_kb(store: Store, *, catalog: Catalog | None = None) -> ImportReport:
    """Write the catalogue, the built-in paper results and the project's measured experience (idempotent)."""
    catalog = catalog or load_catalog()
    before = store.stats()
    store.write_catalog(catalog)
    reports = [import_file(store, p, catalog=catalog) for p in (builtin_papers(), builtin_measured())]
    return ImportReport("catalog + " + " + ".join(r.path for r in reports), "init", sum(r.rows for r in reports),
                        _added(before, store.stats()))


def _added(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, int]:
    """What a write added, per node label and relationship type (only the ones that changed)."""
    return {k: after[g][k] - before[g][k] for g in ("nodes", "relationships") for k in after[g]
            if after[g][k] != before[g][k]}
