"""The root ``automc`` app: sub-apps and commands are joined here and nowhere else."""

from __future__ import annotations

import typer

from automc import __version__
from automc.cli._util import state
from automc.cli.kb import kb_app

app = typer.Typer(help="AutoMC: automated model compression driven by a knowledge graph.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(kb_app, name="kb")


def _register_optional() -> None:
    """Commands whose modules other parts of the package provide."""
    try:
        from automc.cli.compress import compress_cmd
    except ImportError:
        pass
    else:
        app.command("compress", help="Apply a compression scheme to a model and save the result.")(compress_cmd)
    try:
        from automc.cli.embed import embed_cmd
    except ImportError:
        pass
    else:
        kb_app.command("embed", help="Learn TransR + NN_exp embeddings and store them on the graph.")(embed_cmd)
    try:
        from automc.cli.search import report_cmd, runs_cmd, search_cmd
    except ImportError:
        pass
    else:
        app.command("search", help="Search for Pareto-optimal compression schemes.")(search_cmd)
        app.command("runs", help="List search runs.")(runs_cmd)
        app.command("report", help="Rebuild a search run's report from the store.")(report_cmd)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks"),
          version: bool = typer.Option(False, "--version", help="print the version and exit")) -> None:
    state["debug"] = debug
    if version:
        typer.echo(__version__)
        raise typer.Exit()


_register_optional()


def main() -> None:
    app(prog_name="automc")
