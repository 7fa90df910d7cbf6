"""Helpers every command shares: the --store option, error handling, output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
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
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
