"""Images per second of one search evaluation step against a plain PyTorch training loop of the same model on the
same device (issue 16, item 8; target on a GPU: the step reaches >= 50% of the plain loop's rate).

The step is the search's real path: ``search.step.execute`` of a one-step scheme (the catalogue strategy at
``target_ratio_factor=1.0``, default SFP and LMA with bench/methods.py's settings), with the task's data and the
teacher moved to the device once (``WorkerContext.on_device``), as a search worker does. Its images are counted by
``compress.compute`` (trained images, plus forward-only images: the teacher's distillation forwards, BatchNorm
recalibration, validation) and reported both as trained images per second and as trained-image equivalents per second
(forward-only images at 1/3). The reference loop: the same model and batch size, data resident on the device, random
crop (4-pixel zero padding) + horizontal flip on the device, SGD with momentum, bf16 autocast + channels-last on CUDA,
cross-entropy only; timed over as many trained images as the step trained (at least ``--ref-min-steps`` batches),
after 5 warm-up batches. ``ratio`` = the step's equivalents per second / the reference's images per second.

GPU run (one H100/H200; ResNet-56, one epoch of the search split's training part per step):

    python bench/gpu_throughput.py --model resnet56 --weights ../shared/models/resnet56-cifar10.th \
        --data ../shared/datasets/cifar10-search.npz --device cuda --batch-size 128 --epochs 1 --out bench/results

CPU run committed under bench/results/ (labelled CPU; the GPU target is not measured by it):

    python bench/gpu_throughput.py --model resnet20 --weights ../shared/models/resnet20-cifar10.th \
        --data ../shared/datasets/cifar10-search.npz --device cpu --batch-size 64 --epochs 0.1 --threads 2 \
        --ref-min-steps 10 --out bench/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

# one step to the target and bench/methods.py's fine-tune settings; hyperparameters not named take the catalogue's
# middle grid value (the methods' own default)
SETTINGS: dict[str, dict[str, Any]] = {
    "SFP": {"target_ratio_factor": 1.0, "sfp_epochs_factor": 1.0, "sfp_update_every": 1},
    "LMA": {"target_ratio_factor": 1.0, "finetune_epochs_factor": 1.0},
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def strategy_for(method: str):
    """The catalogue strategy the bench runs for ``method``: ``SETTINGS``, the rest at the grid's middle value."""
    from automc.catalog import load_catalog

    cat = load_catalog()
    grid = cat.method(method).grid
    given = SETTINGS.get(method, {"target_ratio_factor": 1.0})
    return cat.make_strategy(method, {k: given.get(k, v[len(v) // 2]) for k, v in grid.items()})


def reference_loop(model: torch.nn.Module, data, dev: torch.device, batch_size: int, steps: int, *,
                   lr: float = 0.01, warmup: int = 5, seed: int = 0) -> dict[str, float]:
    """A plain training loop of ``model`` (trained in place) on ``data``'s training images (already on ``dev``):
    ``warmup`` untimed steps, then ``steps`` timed ones. Returns the images, seconds and images per second."""
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model.to(dev, memory_format=fmt).train()
    x_all, y_all = data.x["train"], data.y["train"]
    n, _, h, w = x_all.shape
    gen = torch.Generator(device=dev).manual_seed(seed)
    mean = torch.tensor(data.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=dev).view(1, -1, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    bs = min(batch_size, n)

    def one_step() -> None:
        idx = torch.randint(0, n, (bs,), device=dev, generator=gen)
        x = F.pad(x_all[idx], (4, 4, 4, 4))
        oy = torch.randint(0, 9, (bs, 1, 1), device=dev, generator=gen)
        ox = torch.randint(0, 9, (bs, 1, 1), device=dev, generator=gen)
        b = torch.arange(bs, device=dev)[:, None, None]
        x = x.permute(0, 2, 3, 1)[b, oy + rows[None, :, None], ox + cols[None, None, :]].permute(0, 3, 1, 2)
        flip = torch.rand(bs, device=dev, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = ((x.float() / 255.0 - mean) / std).contiguous(memory_format=fmt)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        one_step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(dev)
    seconds = time.perf_counter() - t0
    return {"images": steps * bs, "seconds": seconds, "images_per_s": steps * bs / seconds, "steps": steps}


def run_step(method: str, ctx, base_model) -> dict[str, Any]:
    """One search evaluation step (``search.step.execute``) of the one-step scheme of ``method``'s strategy."""
    from automc.compress.compute import FORWARD_ONLY, metered
    from automc.compress.saving import describe
    from automc.search.step import StepJob, cpu_state, execute, step_seed

    strategy = strategy_for(method)
    key = (strategy.id,)
    job = StepJob(key, strategy, cpu_state(base_model), describe(base_model), ctx.base, step_seed(ctx.run_seed, key))
    dev = torch.device(ctx.task.device)
    _sync(dev)
    t0 = time.perf_counter()
    with metered(ctx.task.data) as meter:
        out = execute(job, ctx)
    _sync(dev)
    seconds = time.perf_counter() - t0
    r = out.result
    if not r.ok:
        raise RuntimeError(f"the {method} step failed: {r.error}")
    return {"method": method, "strategy": strategy.id, "seconds": seconds, "train_seconds": r.train_seconds,
            "trained_images": meter.trained, "forward_images": meter.forward,
            "equivalent_images": meter.trained + FORWARD_ONLY * meter.forward, "compute_epochs": r.compute,
            "trained_per_s": meter.trained / seconds, "equivalent_per_s": meter.images / seconds,
            "pr": r.pr, "val_accuracy": r.val_accuracy}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--width", type=int, default=None, help="model width (tests: a tiny model)")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=1.0, help="the step's fine-tune budget (TrainBudget.epochs)")
    ap.add_argument("--methods", default="SFP,LMA")
    ap.add_argument("--target-pr", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-min-steps", type=int, default=20, help="fewest timed batches of the reference loop")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--name", default=None, help="results file stem (default gpu_throughput-<device type>)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from automc.compress.base import Task, TrainBudget
    from automc.compress.data import load_data
    from automc.compress.models import model_for_data
    from automc.compress.scheme import measure
    from automc.search.step import WorkerContext

    dev = torch.device(args.device)
    load_before = os.getloadavg()
    torch.manual_seed(args.seed)
    data = load_data(args.data, seed=args.seed)
    base_model = model_for_data(args.model, data, args.weights, width=args.width).eval()
    task = Task(data, args.target_pr, TrainBudget(epochs=args.epochs, batch_size=args.batch_size), dev, args.seed)
    # as a search worker gets it: a CPU context, then data and teacher on the device once; the base measured there
    ctx = WorkerContext(task, base_model, None, args.seed, 1.0, dev.type).on_device()  # type: ignore[arg-type]
    ctx = dataclasses.replace(ctx, base=measure(base_model, ctx.task, test=False))
    warm = reference_loop(model_for_data(args.model, data, args.weights, width=args.width), ctx.task.data, dev,
                          args.batch_size, 1, warmup=3)  # kernels chosen and caches filled before either path is timed
    steps = [run_step(m.strip(), ctx, base_model) for m in args.methods.split(",") if m.strip()]
    ref_steps = max(args.ref_min_steps, math.ceil(max(s["trained_images"] for s in steps) / args.batch_size))
    ref = reference_loop(model_for_data(args.model, data, args.weights, width=args.width), ctx.task.data, dev,
                         args.batch_size, ref_steps)
    for s in steps:
        s["ratio"] = s["equivalent_per_s"] / ref["images_per_s"]
    name = args.name or f"gpu_throughput-{dev.type}"
    result = {"bench": "gpu_throughput", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine(), "device": str(dev), "gpu_target_measured": dev.type == "cuda",
              "command": "python bench/gpu_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {"model": args.model, "width": args.width, "weights": str(args.weights),
                           "data": str(args.data), "batch_size": args.batch_size, "epochs": args.epochs,
                           "target_pr": args.target_pr, "train_images": data.size("train"),
                           "val_images": data.size("val")},
              "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
              "warmup": warm, "reference": ref, "steps": steps}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    """The results as a short markdown page."""
    m, s, ref = r["machine"], r["settings"], r["reference"]
    where = f"GPU: {m['gpu']}" if r["gpu_target_measured"] else (
        f"**CPU** ({m['cpu']}, {m['torch_threads']} torch threads): the GPU target (>= 50%) is NOT measured here")
    lines = [f"# Evaluation-step throughput vs a plain training loop ({r['device']})", "",
             f"{where}. {r['date']}, torch {m['torch']}; load average {r['load_average_1min']['before']:.1f} "
             f"before, {r['load_average_1min']['after']:.1f} after ({m['cores']} cores; other work on the machine "
             "slows both paths).", "",
             f"Model {s['model']} ({s['weights']}), {s['data']}: {s['train_images']} training images, "
             f"batch {s['batch_size']}, step budget {s['epochs']} epochs, γ = {s['target_pr']}.", "",
             f"Command: `{r['command']}`", "",
             f"Plain reference loop: {ref['images_per_s']:.1f} images/s ({ref['images']} images in "
             f"{ref['seconds']:.2f} s).", "",
             "| step (search.step.execute) | seconds | in the method | trained images | forward-only images "
             "| trained/s | equivalents/s | ratio to reference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for st in r["steps"]:
        lines.append(f"| {st['strategy']} | {st['seconds']:.2f} | {st['train_seconds']:.2f} | {st['trained_images']} "
                     f"| {st['forward_images']} "
                     f"| {st['trained_per_s']:.1f} | {st['equivalent_per_s']:.1f} | {st['ratio']:.0%} |")
    lines += ["", "Equivalents count a forward-only image (teacher forwards, BatchNorm recalibration, validation) as "
              "1/3 of a trained one (`compress.compute`); the step's seconds include rebuilding the parent, pruning, "
              "measuring validation accuracy and FLOPs, and copying the child's state back to the CPU.", ""]
    if not r["gpu_target_measured"]:
        lines += ["On the CPU a short step is mostly forward-only work (validation images are evaluated in eval mode, "
                  "large batches, no augmentation), which costs less than the 1/3 the equivalents assume, so the "
                  "ratio here can exceed 100%; the trained-images column is the step's training rate alone. "
                  "Neither is the GPU figure.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    out = main()
    for st in out["steps"]:
        print(f"{st['strategy']}: {st['equivalent_per_s']:.1f} img-eq/s vs reference "
              f"{out['reference']['images_per_s']:.1f} img/s ({st['ratio']:.0%})")
