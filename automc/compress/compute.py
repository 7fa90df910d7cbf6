"""Training compute, counted in epoch-equivalents of a task's training split, so that a search budget means the same
work whatever the steps cost.

An image through forward and backward counts 1; a forward-only image (evaluation, a teacher's forward in
distillation, BatchNorm recalibration, a method's candidate scoring) counts ``FORWARD_ONLY`` = 1/3, because a
backward pass costs about twice a forward (per layer one product for the input gradient and one for the weight
gradient, against the forward's one). ``epoch_images`` is the one place that turns images into epochs.

A step opens ``metered(data)``; every training and inference loop calls ``charge``. The meter lives in a
``ContextVar``, so each thread (and each Ray worker process) counts only its own work; a meter opened inside another
also charges the outer one. Outside any meter, ``charge`` does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from automc.compress.data import Data

FORWARD_ONLY = 1.0 / 3.0  # a forward-only image, as a share of a trained one (forward + backward ≈ 3 forwards)


@dataclass
class Meter:
    """Images counted since the meter opened: ``trained`` (forward + backward) and ``forward`` (forward only)."""

    epoch_images: int  # images of one epoch of the training split
    trained: int = 0
    forward: int = 0
    parent: Meter | None = None

    @property
    def images(self) -> float:
        """Trained-image equivalents: trained + ``FORWARD_ONLY`` x forward-only."""
        return self.trained + FORWARD_ONLY * self.forward

    @property
    def epochs(self) -> float:
        """Epoch-equivalents of the training split."""
        return self.images / self.epoch_images if self.epoch_images > 0 else 0.0


_METER: ContextVar[Meter | None] = ContextVar("automc_compute_meter", default=None)


def epoch_images(data: Data) -> int:
    """Images in one epoch of ``data``'s training split: the whole training pool when the search trains on a fraction
    of it (``Data.train_pool``), so an epoch of a 25% sample counts 0.25."""
    return int(data.train_pool or data.size("train"))


@contextlib.contextmanager
def metered(data: Data | int) -> Iterator[Meter]:
    """Count the compute of the block (this thread's or task's): a ``Meter`` in epochs of ``data`` (or of an
    ``int`` number of images)."""
    n = data if isinstance(data, int) else epoch_images(data)
    meter = Meter(int(n), parent=_METER.get())
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def charge(images: int, *, backward: bool) -> None:
    """Count ``images`` through a forward pass, with (``backward=True``) or without a backward pass, on every open
    meter."""
    meter = _METER.get()
    n = int(images)
    while meter is not None:
        if backward:
            meter.trained += n
        else:
            meter.forward += n
        meter = meter.parent
