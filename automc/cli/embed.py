"""``automc kb embed``: learn strategy embeddings (TransR + NN_exp, Algorithm 1) and store them on the graph."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from automc.cli._util import console, handle_errors, print_json, store_option
from automc.embed import MODELS, EmbedConfig, fit
from automc.kb import open_store


@handle_errors
def embed_cmd(store: str = store_option(),
              epochs: int = typer.Option(EmbedConfig.epochs, "--epochs", min=1, help="epochs (KG pass + NN_exp steps)"),
              dim: int = typer.Option(32, "--dim", help="entity (and relation) embedding dimension"),
              model: str = typer.Option("transr", "--model", help=f"one of: {', '.join(MODELS)}"),
              seed: int = typer.Option(0, "--seed"),
              device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]"),
              threads: int = typer.Option(EmbedConfig.threads, "--threads", min=1, help="CPU threads for training"),
              no_experience: bool = typer.Option(False, "--no-experience", help="skip NN_exp refinement"),
              save: Path = typer.Option(None, "--save", help="also write result.json + embeddings.npz here"),
              json_out: bool = typer.Option(False, "--json")) -> None:
    """Train embeddings of every strategy, method, hyperparameter, setting and technique; write them back."""
    config = EmbedConfig(model=model, dim=dim, relation_dim=dim, epochs=epochs, seed=seed, device=device,
                         use_experience=not no_experience, threads=threads)
    with open_store(store) as s:
        columns = (TextColumn("[bold]embed[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=json_out) as bar:
            task = bar.add_task("embed", total=epochs, info="")

            def progress(epoch: int, total: int, row: dict) -> None:
                info = f"kg {row['kg_loss']:.4f}" + (f"  exp {row['exp_loss']:.4f}" if "exp_loss" in row else "")
                bar.update(task, completed=epoch, info=info)

            result = fit(s, config, progress=progress)
        uri = s.uri
    if save is not None:
        result.save(save)
    m = result.metrics
    if json_out:
        print_json({"store": uri, **result.to_dict()})
        return
    exp = f", NN_exp loss {m['exp_loss']:.4f} on {m['num_experiences']} experiences" if m.get("exp_loss") else ""
    console.print(f"embedded {m['num_entities']} entities ({m['num_triples']} triples) with {config.model}, "
                  f"dim {dim}, {epochs} epochs in {m['seconds']:.1f} s on {m['device']}")
    console.print(f"KG loss {m['kg_loss']:.4f}{exp}")
    console.print(f"stored as run [bold]{result.run_id}[/] (KB version {result.kb_version}) in {uri}")
