"""``automc compress``: apply a scheme to a model, print before/after, save the result.

``compress`` is the plain function (returns data, never prints or exits); ``compress_cmd`` declares the
options, forwards, and renders. torch and the compression modules are imported inside the functions, so
``automc compress --help`` does not load them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from automc.catalog import Scheme, load_catalog
from automc.cli._util import console, err_console, handle_errors, print_json
from automc.errors import DiskError, ValidationError

if TYPE_CHECKING:
    import torch

    from automc.compress.scheme import SchemeResult
    from automc.kb import TaskFeatures

STORE_HELP = ("record the evaluation in this knowledge base, ladybug://PATH or neo4j://HOST:PORT (not recorded "
              "unless given or AUTOMC_STORE is set)")
VAL_FROM_WARNING = ("warning: --val-from train selects on images carved from the training data; that is biased "
                    "when the weights were trained on them (use it only for a model trained on other data)")


@dataclass(frozen=True)
class CompressRun:
    result: SchemeResult
    paths: dict[str, Path]
    task_info: dict[str, Any]
    evaluation: str | None = None
    # split -> {"source": which images, "images": how many}: what each column of the table was measured on
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)


def _device(name: str | None) -> torch.device:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValidationError(f"unknown device {name!r}; use cpu or cuda", field="--device")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValidationError("CUDA is not available on this machine; use --device cpu", field="--device")
    return torch.device(name)


def check_options(*, target_pr: float, epochs: float, data_fraction: float, seed: int, batch_size: int,
                  lr: float, val_from: str = "test") -> None:
    """Refuse out-of-range numbers before anything is loaded; each error names its flag."""
    checks = [
        ("--target-pr", target_pr, math.isfinite(target_pr) and 0.0 < target_pr < 1.0, "a number in (0, 1)"),
        ("--epochs", epochs, math.isfinite(epochs) and epochs >= 0, "a finite number ≥ 0"),
        ("--data-fraction", data_fraction, 0.0 < data_fraction <= 1.0, "a number in (0, 1]"),
        ("--seed", seed, 0 <= seed < 2**32, "an integer in 0..4294967295"),
        ("--batch-size", batch_size, batch_size >= 1, "an integer ≥ 1"),
        ("--lr", lr, math.isfinite(lr) and lr > 0, "a finite number > 0"),
        ("--val-from", val_from, val_from in ("test", "train"), "test or train"),
    ]
    for flag, value, ok, expected in checks:
        if not ok:
            raise ValidationError(f"must be {expected}, got {value}", field=flag)


def check_out_dir(out: str | Path) -> Path:
    """``out`` must be a directory, or creatable as one, that this process can write (a read-only mount too, which
    ``os.access`` passes for root); nothing is left behind."""
    from automc._fs import check_writable_dir

    return check_writable_dir(out, "--out")


def compress(model: str, data: Path, scheme: str, out: Path, *, weights: Path | None = None,
             target_pr: float = 0.4, epochs: float = 10.0, data_fraction: float = 1.0, seed: int = 0,
             device: str | None = None, batch_size: int = 128, lr: float = 0.01,
             progress: Any = None, store: str | None = None, val_data: Path | None = None,
             val_from: str = "test") -> CompressRun:
    """Load model and data, apply ``scheme`` with gamma = ``target_pr``, save into ``out``.

    Fine-tunes on the training part, measures validation accuracy on ``val_data`` / the data's own validation
    part / half of the test part (``val_from="test"``) or a share of the training part (``val_from="train"``),
    and test accuracy on the rest. Everything is checked before training: options, ``out``, the scheme, the
    data against the model and the weights. With ``store``, the evaluation is recorded RUNNING before training
    and COMPLETE, FAILED or (Ctrl-C, a disk error) INTERRUPTED after, so a killed run leaves a trace. Raises
    ``ValidationError`` / ``NotFoundError`` for bad input and ``CompressionError`` when a method fails.
    """
    check_options(target_pr=target_pr, epochs=epochs, data_fraction=data_fraction, seed=seed,
                  batch_size=batch_size, lr=lr, val_from=val_from)
    out = check_out_dir(out)
    parsed: Scheme = load_catalog().parse_scheme(scheme)
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import load_data
    from automc.compress.identity import task_features
    from automc.compress.models import model_for_data
    from automc.compress.saving import save_compressed
    from automc.compress.scheme import apply_scheme, measure

    dev = _device(device)
    torch.manual_seed(seed)
    ds = load_data(data, val_data=val_data, val_from=val_from, fraction=data_fraction, seed=seed, device=dev)
    net = model_for_data(model, ds, weights)
    task = Task(ds, target_pr, TrainBudget(epochs=epochs, batch_size=batch_size, lr=lr), dev, seed)
    before = measure(net, task)
    splits = {k: {"source": ds.sources[k], "images": ds.size(k)} for k in ("train", "val", "test")}
    # the same Task as ``automc search`` of this model, weights and data: validation accuracy, whole training part
    features = task_features(model, data, ds, val_accuracy=before.acc_val, params=before.params, flops=before.flops)
    info = {**dataclasses.asdict(features), "device": str(dev)}
    # The store is opened only around each write: a LadybugDB file stays free for others while training runs.
    eval_id = _start_evaluation(store, features, parsed, target_pr, str(dev)) if store is not None else None
    if eval_id is not None:  # refresh the record's heartbeat as steps go by, so others can tell it is alive
        from automc.kb import heartbeat_callback

        progress = heartbeat_callback(store, eval_id, progress)
    from automc._interrupt import catching, check

    try:
        with catching():  # a Ctrl-C swallowed inside Torch-Pruning's tracing still stops the run
            result = apply_scheme(net, parsed, task, progress=progress, before=before)
            check()
        paths = save_compressed(result.model, out, ds.example_input(2), mean=ds.mean, std=ds.std,
                                extra={"scheme": parsed.text, "target_pr": target_pr})
        (Path(out) / "result.json").write_text(json.dumps({**result.to_dict(), "data": splits}, indent=1))
    except BaseException as e:
        if eval_id is not None:  # cut short by the user or the disk, not the method's doing
            _end_evaluation(store, eval_id, error=f"{type(e).__name__}: {e}",
                            cut_short=isinstance(e, KeyboardInterrupt | DiskError))
        raise
    if eval_id is not None:
        _end_evaluation(store, eval_id, record=result.evaluation_record())
    return CompressRun(result, paths, info, eval_id, splits)


def _start_evaluation(store_uri: str, features: TaskFeatures, scheme: Scheme, target_pr: float, device: str) -> str:
    """Record a RUNNING evaluation of ``scheme`` on the task; returns its id."""
    from automc.kb import open_store

    with open_store(store_uri, create=True) as s:
        return s.start_evaluation(features, scheme, target_pr=target_pr, device=device)


def _end_evaluation(store_uri: str, eval_id: str, *, record: dict[str, Any] | None = None,
                    error: str | None = None, cut_short: bool = False) -> None:
    from automc.kb import open_store

    with open_store(store_uri, create=False) as s:
        if error is not None and cut_short:
            s.interrupt_evaluation(eval_id, error)
        elif error is not None:
            s.fail_evaluation(eval_id, error)
        else:
            s.finish_evaluation(eval_id, record or {})


def _sources(splits: dict[str, dict[str, Any]]) -> list[str]:
    """Which images each column of the table was measured on (and what the model was fine-tuned on)."""
    return [f"{label}: {splits[k]['source']} ({splits[k]['images']:,} images)"
            for label, k in (("val acc", "val"), ("test acc", "test"), ("fine-tuned on", "train")) if k in splits]


def _table(result: SchemeResult) -> Table:
    b = result.before
    t = Table(title=result.scheme, title_justify="left")
    for col in ("", "parameters", "FLOPs", "val acc", "test acc"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("before", f"{b.params:,}", f"{b.flops / 1e6:,.1f} M", f"{b.acc_val:.2%}", f"{b.acc_test:.2%}")
    for i, s in enumerate(result.steps, 1):
        m = s.measurement
        t.add_row(f"step {i} {s.method}", f"{m.params:,}", f"{m.flops / 1e6:,.1f} M", f"{m.acc_val:.2%}",
                  f"{m.acc_test:.2%}")
    t.add_row("change", f"PR {result.pr:.1%}", f"FR {result.fr:.1%}", "", f"AR {result.ar:+.2%}")
    return t


@handle_errors
def compress_cmd(
    model: str = typer.Option(..., "--model", help="resnet20/32/44/56/110/164, vgg11/13/16/19, or torchvision"),
    data: Path = typer.Option(..., "--data", help=".npz, CIFAR python batches, or train/ + test/ (+ val/) folders"),
    scheme: str = typer.Option(..., "--scheme", help='e.g. "NS(target_ratio_factor=0.5) > LeGR()"'),
    out: Path = typer.Option(..., "--out", help="directory for the compressed model"),
    weights: Path | None = typer.Option(None, "--weights", help="pretrained state dict (.th/.pt)"),
    target_pr: float = typer.Option(0.4, "--target-pr", help="parameter-reduction target gamma"),
    epochs: float = typer.Option(10.0, "--epochs", help="base fine-tune budget the epoch factors multiply"),
    data_fraction: float = typer.Option(1.0, "--data-fraction", help="stratified share of the training part"),
    val_data: Path | None = typer.Option(
        None, "--val-data", help="validation images: .npz with x_val/y_val (or x_test/y_test), or class folders "
        "(default: the data's own x_val or val/, else half of the test part)"),
    val_from: str = typer.Option(
        "test", "--val-from", help="without a validation part, split it off the test part (test) or the "
        "training part (train: only for a model trained on other data)"),
    seed: int = typer.Option(0, "--seed"),
    store: str | None = typer.Option(None, "--store", envvar="AUTOMC_STORE", help=STORE_HELP, show_envvar=False),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(0.01, "--lr", help="fine-tune learning rate"),
) -> None:
    """Apply a compression scheme to a model and save the result."""
    progress = None if json_out else (lambda msg: err_console.print(msg, highlight=False))
    if val_from == "train":
        err_console.print(VAL_FROM_WARNING, highlight=False, soft_wrap=True)
    run = compress(model, data, scheme, out, weights=weights, target_pr=target_pr, epochs=epochs,
                   data_fraction=data_fraction, seed=seed, device=device, batch_size=batch_size, lr=lr,
                   progress=progress, store=store, val_data=val_data, val_from=val_from)
    eval_id = run.evaluation
    if json_out:
        obj = run.result.to_dict()
        obj.update(out=str(out), standalone=str(run.paths["standalone"]), evaluation=eval_id, data=run.splits)
        print_json(obj)
        return
    console.print(_table(run.result))
    for line in _sources(run.splits):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print(f"saved to {out} ({run.paths['standalone'].name}, state_dict.pt, architecture.json)")
    if eval_id:
        console.print(f"recorded evaluation {eval_id}")
