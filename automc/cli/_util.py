"""Helpers every command shares: the --store option, error handling, output."""

from __future__ import annotations

import decimal
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console

from automc.errors import AutomcError

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)
state = {"debug": False}

STORE_HELP = "knowledge base: ladybug://PATH (default: user data dir) or neo4j://HOST:PORT [env: AUTOMC_STORE]"


def store_option() -> Any:
    return typer.Option(None, "--store", envvar="AUTOMC_STORE", help=STORE_HELP, show_envvar=False)


def handle_errors(fn: F) -> F:
    """Turn an ``AutomcError`` into ``error: <message>`` on stderr and exit status 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutomcError as e:
            if state["debug"]:
                raise
            lines = str(e).splitlines() or [type(e).__name__]
            err_console.print(f"[bold red]error:[/] {lines[0]}", markup=True, highlight=False, soft_wrap=True)
            for line in lines[1:]:
                err_console.print(line, markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(v: Any) -> Any:
    """Numbers stay numbers (engines return big integers as ``Decimal``); anything else as its text."""
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return str(v)


def print_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    """A Rich table on a terminal; tab-separated lines (header first) in pipes and logs, so nothing wraps or is
    cut."""
    rows = list(rows)
    if console.is_terminal:
        from rich.table import Table

        table = Table(*columns, title=title)
        for r in rows:
            table.add_row(*(str(c) for c in r))
        console.print(table)
        return
    out = sys.stdout
    if title:
        out.write(f"# {title}\n")
    for r in (columns, *rows):
        out.write("\t".join(_plain_cell(c) for c in r) + "\n")
    out.flush()


def _plain_cell(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
