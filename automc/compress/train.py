"""The one generic fine-tune loop every method uses, and ``evaluate``.

SGD with Nesterov momentum and a cosine learning rate over the whole run; fractional epochs are allowed
(0.4 epochs = 40% of an epoch's batches). Methods change training only through ``Hooks`` (no-ops by
default), e.g. NS adds an L1 penalty on BN scales with ``regularize`` and SFP zeroes filters in
``after_step``. Knowledge distillation from an optional ``teacher``. On CUDA: bf16 autocast and
channels-last; on the CPU: fp32. Seeded by ``task.seed``. No step waits on the device: the loss's finiteness is
tracked on the device and read every ``DIVERGENCE_CHECK_EVERY`` steps, logits stay on the device until the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from automc._interrupt import check as check_interrupt
from automc.compress.base import Task
from automc.compress.compute import charge
from automc.compress.data import Data
from automc.compress.metrics import Accuracy
from automc.errors import CompressionError

# steps between reads of the on-device finiteness flag: each read waits for the device to drain its queue, so reading
# every step (or every 20) stalls a GPU; a diverged run is still stopped within this many steps
DIVERGENCE_CHECK_EVERY = 100


@dataclass(frozen=True)
class Hooks:
    """Optional method-specific behaviour inside the fine-tune loop; every field defaults to doing nothing.

    - ``regularize(model) -> Tensor``: an extra loss term added to each step's loss (NS: L1 on BN scales).
    - ``extra_loss(model, x, y, logits) -> Tensor``: an extra loss term that needs the batch (auxiliary
      losses; capture features with forward hooks installed before calling ``finetune``).
    - ``after_step(model, step, total_steps)``: after each optimiser step (``step`` counts from 1).
    - ``after_epoch(model, epoch)``: after every full epoch's worth of steps (``epoch`` counts from 1).
    """

    regularize: Callable[[nn.Module], torch.Tensor] | None = None
    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    after_step: Callable[[nn.Module, int, int], None] | None = None
    after_epoch: Callable[[nn.Module, int], None] | None = None


@dataclass(frozen=True)
class TrainLog:
    steps: int
    epochs: float
    seconds: float
    last_loss: float


def steps_for(task: Task, epochs: float) -> int:
    """Optimiser steps of ``epochs`` (fractional) epochs of the fine-tune split; ≥ 1 when epochs > 0."""
    if epochs <= 0:
        return 0
    spe = task.data.steps_per_epoch(task.budget.batch_size)
    return max(1, round(epochs * spe))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation loss: T² · KL(softmax(t/T) ‖ softmax(s/T))."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def finetune(model: nn.Module, task: Task, epochs: float, *, hooks: Hooks | None = None,
             teacher: nn.Module | None = None, kd_temperature: float = 4.0, kd_alpha: float = 0.5,
             lr: float | None = None, steps: int | None = None) -> TrainLog:
    """Train ``model`` in place on ``task.data``'s ``"train"`` split for ``epochs`` (fractional) epochs.

    ``steps`` overrides the number of optimiser steps. With a ``teacher`` the loss is
    ``(1 - kd_alpha) * CE + kd_alpha * kd_loss``. Leaves the model in eval mode on ``task.device``.
    Raises ``CompressionError`` when the loss becomes non-finite.
    """
    hooks = hooks or Hooks()
    data, budget, dev = task.data, task.budget, torch.device(task.device)
    total = steps if steps is not None else steps_for(task, epochs)
    t0 = time.perf_counter()
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model.to(dev, memory_format=fmt)
    if total <= 0:
        model.eval()
        return TrainLog(0, 0.0, 0.0, float("nan"))
    if teacher is not None:
        teacher.to(dev, memory_format=fmt).eval()
    torch.manual_seed(task.seed)
    gen = torch.Generator(device=data.device).manual_seed(task.seed)
    base_lr = budget.lr if lr is None else lr
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=base_lr,
                          momentum=budget.momentum, nesterov=budget.momentum > 0,
                          weight_decay=budget.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    spe = data.steps_per_epoch(budget.batch_size)
    amp = cuda and task.amp
    model.train()
    step, loss = 0, None
    finite = torch.ones((), dtype=torch.bool, device=dev)  # every loss so far was finite (kept on the device)
    while step < total:
        for x, y in data.batches("train", budget.batch_size, shuffle=True, generator=gen,
                                 drop_last=data.size("train") >= budget.batch_size):
            x = x.to(dev, non_blocking=True, memory_format=fmt)
            y = y.to(dev, non_blocking=True)
            charge(x.shape[0], backward=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                if teacher is not None and kd_alpha > 0:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    charge(x.shape[0], backward=False)
                    loss = (1 - kd_alpha) * loss + kd_alpha * kd_loss(logits.float(), t_logits.float(),
                                                                      kd_temperature)
                if hooks.extra_loss is not None:
                    loss = loss + hooks.extra_loss(model, x, y, logits)
            if hooks.regularize is not None:
                loss = loss + hooks.regularize(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            check_interrupt()  # a Ctrl-C swallowed by a library call in a hook or the model still stops training
            if hooks.after_step is not None:
                hooks.after_step(model, step, total)
            if hooks.after_epoch is not None and step % spe == 0:
                hooks.after_epoch(model, step // spe)
            finite &= torch.isfinite(loss.detach())
            if (step % DIVERGENCE_CHECK_EVERY == 0 or step == total) and not bool(finite):
                raise CompressionError(f"training diverged (loss {float(loss.detach())}) by step {step}; "
                                       f"try a lower learning rate than {base_lr}")
            if step >= total:
                break
    model.eval()
    return TrainLog(total, total / spe, time.perf_counter() - t0, float(loss.detach()) if loss is not None else
                    float("nan"))


@torch.no_grad()
def _logits(model: nn.Module, data: Data, split: str, batch_size: int, device: torch.device | str | None,
            max_batches: int | None) -> torch.Tensor:
    """Logits of ``model`` on a split (float32), left on the model's device (no transfer per batch)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    try:
        for x, _ in data.batches(split, batch_size, augment=False, max_batches=max_batches):
            x = x.to(dev, non_blocking=True)
            if dev.type == "cuda":
                x = x.to(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                out.append(model(x).float())
            charge(x.shape[0], backward=False)
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, device=dev)


def predict(model: nn.Module, data: Data, split: str = "test", *, batch_size: int = 500,
            device: torch.device | str | None = None, max_batches: int | None = None) -> torch.Tensor:
    """Logits of ``model`` on a split (float32, on the CPU)."""
    return _logits(model, data, split, batch_size, device, max_batches).cpu()


def evaluate(model: nn.Module, data: Data, split: str = "test", *, batch_size: int = 500,
             device: torch.device | str | None = None, max_batches: int | None = None) -> Accuracy:
    """Top-1 accuracy of ``model`` on ``split`` (``"train"``, ``"val"``, ``"test"``), without augmentation."""
    logits = _logits(model, data, split, batch_size, device, max_batches)
    y = data.y[split][: logits.shape[0]].to(logits.device, non_blocking=True)
    # counted on the device: the one value read back is the count
    return Accuracy(int((logits.argmax(1) == y).sum()), int(y.shape[0]))
