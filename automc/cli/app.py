"""The root ``automc`` app: sub-apps and commands are joined here and nowhere else.

Commands whose modules import torch (``compress``, ``kb embed``) are registered lazily: their module is imported
only when that command runs, so ``automc --help`` and the ``kb`` commands start without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import typer
from typer.core import TyperGroup

from automc import __version__
from automc.cli._util import state
from automc.cli.kb import kb_app

# group -> command name -> (module, attribute, help). The attribute is a command function or a Typer sub-app.
LAZY_COMMANDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "automc": {
        "compress": ("automc.cli.compress", "compress_cmd",
                     "Apply a compression scheme to a model and save the result."),
        "search": ("automc.cli.search", "search_cmd", "Search for Pareto-optimal compression schemes."),
        "runs": ("automc.cli.search", "runs_cmd", "List search runs."),
        "report": ("automc.cli.search", "report_cmd", "Rebuild search runs' reports from the store."),
    },
    "kb": {
        "embed": ("automc.cli.embed", "embed_cmd", "Learn TransR + NN_exp embeddings and store them on the graph."),
    },
}


def _load(name: str, module: str, attr: str, help_text: str) -> Any:
    """The click command for ``module.attr``: a Typer sub-app as its group, a function as a single command."""
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        return typer.main.get_group(obj)
    sub = typer.Typer(add_completion=False)
    sub.command(name, help=help_text)(obj)
    return typer.main.get_command(sub)


class _Unloaded(typer.core.TyperCommand):
    """Stands in for a lazy command in listings, suggestions and completion until it is resolved to run."""


class LazyGroup(TyperGroup):
    """A Typer group that lists lazy commands by name and help, and imports one only when it is resolved to run."""

    lazy: dict[str, tuple[str, str, str]] = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, (module, _, help_text) in self.lazy.items():
            # A module another part of the package has not provided yet is simply not offered.
            if name not in self.commands and importlib.util.find_spec(module) is not None:
                self.commands[name] = _Unloaded(name, help=help_text, callback=None)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and isinstance(self.commands.get(args[0]), _Unloaded):
            self.commands[args[0]] = _load(args[0], *self.lazy[args[0]])
        return super().resolve_command(ctx, args)


def _lazy_group(group: str) -> type[LazyGroup]:
    return type(f"LazyGroup_{group}", (LazyGroup,), {"lazy": LAZY_COMMANDS[group]})


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


app = typer.Typer(help="AutoMC: automated model compression driven by a knowledge graph.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=_lazy_group("automc"))
app.add_typer(kb_app, name="kb", cls=_lazy_group("kb"))


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks"),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    state["debug"] = debug


def main() -> None:
    app(prog_name="automc")
