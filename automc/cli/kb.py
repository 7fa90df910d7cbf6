"""``automc kb``: build, import into, inspect, query and export the knowledge base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from automc.cli._util import console, handle_errors, print_json, store_option
from automc.errors import ValidationError
from automc.importers import import_file, init_kb
from automc.kb import open_store, queries
from automc.kb.backup import export_store

kb_app = typer.Typer(help="Build, import into, inspect, query and export the knowledge base.", no_args_is_help=True)


@kb_app.command("init")
@handle_errors
def init_cmd(store: str = store_option(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Write the strategy catalogue and the AutoMC paper's results (idempotent), then print a summary."""
    with open_store(store) as s:
        report = init_kb(s)
        stats = s.stats()
        uri = s.uri
    if json_out:
        print_json({"store": uri, "added": report.added, **stats})
        return
    console.print(f"knowledge base at [bold]{uri}[/]")
    _print_stats(stats, report.added)


@kb_app.command("import")
@handle_errors
def import_cmd(path: Path = typer.Argument(..., help="CSV file (paper tables or experience records) or an export "
                                                     "directory"),
               store: str = store_option(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Validate FILE completely, then add its records in one transaction (nothing is written if a row is bad)."""
    with open_store(store) as s:
        report = import_file(s, path)
    if json_out:
        print_json({"path": report.path, "format": report.format, "rows": report.rows, "added": report.added})
        return
    added = report.added.get("Experience", 0)
    console.print(f"{report.path}: {report.rows} rows ({report.format}); added {added} Experience, "
                  f"{sum(report.added.values())} nodes and relationships in all")


@kb_app.command("stats")
@handle_errors
def stats_cmd(store: str = store_option(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Count nodes per label and relationships per type."""
    with open_store(store) as s:
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
              list_named: bool = typer.Option(False, "--list", help="list the named queries")) -> None:
    """Run a parameterised Cypher query or a named query; rows as a table or JSON."""
    if list_named:
        table = Table("name", "parameters", "description")
        for q in queries.QUERIES.values():
            table.add_row(q.name, ", ".join(p.name for p in q.params), q.description)
        console.print(table)
        return
    if bool(cypher) == bool(named):
        raise ValidationError("give either a Cypher query or --named NAME", field="query")
    params = _parse_params(param)
    with open_store(store) as s:
        if named:
            rows = s.named(named, {k: v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict)
                                   else v for k, v in params.items()})
        else:
            rows = s.query(cypher, params)
    if json_out:
        print_json(rows)
        return
    table = Table(*(rows[0].keys() if rows else ["(no rows)"]))
    for r in rows:
        table.add_row(*(_cell(v) for v in r.values()))
    console.print(table)


@kb_app.command("export")
@handle_errors
def export_cmd(directory: Path = typer.Argument(..., help="new directory for the export"),
               store: str = store_option()) -> None:
    """Dump the whole knowledge base to a directory that 'automc kb import' reads back."""
    with open_store(store) as s:
        manifest = export_store(s, directory)
    n = sum(manifest["stats"]["nodes"].values())
    m = sum(manifest["stats"]["relationships"].values())
    console.print(f"exported {n} nodes and {m} relationships to {directory}")


@kb_app.command("methods")
@handle_errors
def methods_cmd() -> None:
    """List the catalogue's methods with their hyperparameter grids."""
    from automc.catalog import load_catalog

    cat = load_catalog()
    table = Table("method", "strategies", "hyperparameters (grid)", "techniques")
    for m in cat.methods.values():
        grid = "\n".join(f"{k}: {', '.join(map(str, v))}" for k, v in m.grid.items())
        table.add_row(m.name, str(m.n_strategies), grid, ", ".join(m.techniques))
    console.print(table)
    console.print(f"{cat.n_strategies()} strategies in all")


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
        table = Table("label" if group == "nodes" else "type", "paper", "count", *(["added"] if added else []),
                      title=group)
        for k, v in stats[group].items():
            table.add_row(k, spec[k].paper, str(v), *([str(added.get(k, 0))] if added else []))
        console.print(table)
