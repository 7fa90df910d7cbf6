"""``automc kb``: build, import into, inspect, query and export the knowledge base."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import typer

from automc.cli._util import console, err_console, handle_errors, print_json, print_rows, store_option
from automc.errors import ValidationError, ValidationErrors
from automc.importers import import_file, init_kb
from automc.kb import Store, open_store, queries
from automc.kb.backup import export_store

kb_app = typer.Typer(help="Build, import into, inspect, query and export the knowledge base.", no_args_is_help=True)


def _opened(s: Store) -> Store:
    if getattr(s, "recovered", False):
        err_console.print("note: dropped the unfinished transaction of a writer that was killed; committed data is "
                          "intact", highlight=False, soft_wrap=True)
    return s


@kb_app.command("init")
@handle_errors
def init_cmd(store: str = store_option(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Write the strategy catalogue and the AutoMC paper's results (idempotent), then print a summary.

    On an existing store it also repairs what automc owns: missing schema tables, columns and the version node."""
    with _opened(open_store(store, create=True, repair=True)) as s:
        report = init_kb(s)
        stats = s.stats()
        uri = s.uri
    if json_out:
        print_json({"store": uri, "added": report.added, **stats})
        return
    console.print(f"knowledge base at {uri}", highlight=False, soft_wrap=True)
    _print_stats(stats, report.added)


@kb_app.command("import")
@handle_errors
def import_cmd(path: Path = typer.Argument(..., help="CSV file (paper tables or experience records) or an export "
                                                     "directory"),
               store: str = store_option(), json_out: bool = typer.Option(False, "--json"),
               errors: Path | None = typer.Option(None, "--errors", help="write every bad row's error to this file "
                                                  "(emptied when the import succeeds); the terminal shows the first "
                                                  f"{ValidationErrors.SHOWN}")) -> None:
    """Validate FILE completely, then add its records in one transaction (nothing is written if a row is bad)."""
    if errors is not None:
        _check_errors_file(errors)
    try:
        with _opened(open_store(store, create=True)) as s:
            try:
                report = import_file(s, path)
            except BaseException:
                if s.created:  # a failed import into a new store leaves no store behind
                    s.discard()
                raise
    except (ValidationError, ValidationErrors) as e:
        if errors is not None:
            lines = e.lines() if isinstance(e, ValidationErrors) else [str(e)]
            _write_lines(errors, lines)
        if isinstance(e, ValidationErrors):
            e.more = (f"all {len(e.errors):,} written to {errors}" if errors is not None
                      else "use --errors FILE for all")
        raise
    if errors is not None:
        _write_lines(errors, [])
    if json_out:
        print_json({"path": report.path, "format": report.format, "rows": report.rows, "added": report.added})
        return
    added = report.added.get("Experience", 0)
    console.print(f"{report.path}: {report.rows} rows ({report.format}); added {added} Experience, "
                  f"{sum(report.added.values())} nodes and relationships in all", highlight=False, soft_wrap=True)


def _check_errors_file(path: Path) -> None:
    """``--errors`` must name a file this process can write, in a folder that exists; checked before any work."""
    if path.is_dir():
        raise ValidationError("is a directory; give a file name", path=str(path), field="--errors")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise ValidationError(f"folder {folder} does not exist", path=str(path), field="--errors")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValidationError("not writable", path=str(path), field="--errors")


def _write_lines(path: Path, lines: list[str]) -> None:
    """Replace ``path`` with ``lines`` at once (a temporary file renamed into place), so it is never half written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ValidationError(f"cannot write: {e.strerror or e}", path=str(path), field="--errors") from None


@kb_app.command("stats")
@handle_errors
def stats_cmd(store: str = store_option(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Count nodes per label and relationships per type."""
    with _opened(open_store(store, read_only=True)) as s:
        stats = s.stats()
    if json_out:
        print_json(stats)
    else:
        _print_stats(stats)


@kb_app.command("query")
@handle_errors
def query_cmd(cypher: str = typer.Argument(None, help="a Cypher query (use $name parameters)"),
              named: str = typer.Option(None, "--named", help="run a named query instead"),
              param: list[str] = typer.Option([], "--param", help="k=v (repeatable); values are parsed as JSON "
                                                                  "when possible"),
              store: str = store_option(), json_out: bool = typer.Option(False, "--json"),
              write: bool = typer.Option(False, "--write", help="allow the query to change the knowledge base "
                                                                "(and to use COPY/LOAD/EXPORT/IMPORT/INSTALL)"),
              list_named: bool = typer.Option(False, "--list", help="list the named queries")) -> None:
    """Run a parameterised Cypher query or a named query; rows as a table or JSON. Read-only unless --write."""
    if list_named:
        print_rows(("name", "parameters", "description"),
                   ((q.name, ", ".join(p.name for p in q.params), q.description) for q in queries.QUERIES.values()))
        return
    if bool(cypher) == bool(named):
        raise ValidationError("give either a Cypher query or --named NAME", field="query")
    params = _parse_params(param)
    with _opened(open_store(store, create=False, read_only=not write)) as s:
        if named:
            rows = s.named(named, {k: v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict)
                                   else v for k, v in params.items()})
        else:
            rows = s.query(cypher, params)
    if json_out:
        print_json(rows)
        return
    columns = list(rows[0].keys()) if rows else ["(no rows)"]
    print_rows(columns, ([_cell(v) for v in r.values()] for r in rows))


@kb_app.command("export")
@handle_errors
def export_cmd(directory: Path = typer.Argument(..., help="new directory for the export"),
               store: str = store_option()) -> None:
    """Dump the whole knowledge base to a directory that 'automc kb import' reads back."""
    with _opened(open_store(store, read_only=True)) as s:
        manifest = export_store(s, directory)
    n = sum(manifest["stats"]["nodes"].values())
    m = sum(manifest["stats"]["relationships"].values())
    console.print(f"exported {n} nodes and {m} relationships to {directory}", highlight=False, soft_wrap=True)


@kb_app.command("stale")
@handle_errors
def stale_cmd(store: str = store_option(),
              max_age: str = typer.Option("1h", "--max-age", help="heartbeat age after which a RUNNING record of "
                                                                   "another host is stale (90s, 30m, 1h, 2d)"),
              json_out: bool = typer.Option(False, "--json")) -> None:
    """Mark RUNNING evaluations and search runs whose process is gone INTERRUPTED (stale)."""
    limit = _duration(max_age)
    with _opened(open_store(store, create=False)) as s:
        ids = s.fail_stale(limit)
    if json_out:
        print_json({"stale": ids})
        return
    console.print(f"marked {len(ids)} stale record(s)" + "".join(f"\n{i}" for i in ids), highlight=False)


@kb_app.command("methods")
@handle_errors
def methods_cmd() -> None:
    """List the catalogue's methods with their hyperparameter grids."""
    from automc.catalog import load_catalog

    cat = load_catalog()
    grid_sep = "\n" if console.is_terminal else "; "
    print_rows(("method", "strategies", "hyperparameters (grid)", "techniques"),
               ((m.name, m.n_strategies, grid_sep.join(f"{k}: {', '.join(map(str, v))}" for k, v in m.grid.items()),
                 ", ".join(m.techniques)) for m in cat.methods.values()))
    console.print(f"{cat.n_strategies()} strategies in all")


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise ValidationError(f"expected a duration such as 90s, 30m, 1h or 2d, got {text!r}", field="--max-age")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValidationError(f"expected k=v, got {item!r}", field="--param")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _cell(v: Any) -> str:
    if isinstance(v, list) and len(v) > 6:
        return f"[{', '.join(f'{x:.3g}' if isinstance(x, float) else str(x) for x in v[:6])}, ... ({len(v)})]"
    return "" if v is None else str(v)


def _print_stats(stats: dict[str, dict[str, int]], added: dict[str, int] | None = None) -> None:
    from automc.kb.schema import NODE, REL

    for group, spec in (("nodes", NODE), ("relationships", REL)):
        columns = ("label" if group == "nodes" else "type", "paper", "count", *(["added"] if added else []))
        print_rows(columns, ((k, spec[k].paper, v, *([added.get(k, 0)] if added else []))
                             for k, v in stats[group].items()), title=group)
