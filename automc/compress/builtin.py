"""The built-in task that needs no download: scikit-learn's handwritten digits (8x8 grayscale, 1 797 images,
shipped inside scikit-learn) and a small CNN (``build_model("smallcnn")``) trained on them from scratch.

``digits`` is registered in ``data.BUILTIN_DATASETS``, so ``load_data("digits")`` returns these data (a path
named ``digits`` that exists is read as data instead); importing ``automc.compress`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from automc.compress.data import Data, builtin_dataset, from_arrays

if TYPE_CHECKING:
    import torch
    from torch import nn

    from automc.compress.train import TrainLog

DIGITS = "digits"  # the reserved data name


def digits_arrays(seed: int = 0, test_fraction: float = 0.3) -> dict[str, np.ndarray]:
    """``x_train, y_train, x_test, y_test``: uint8 NHWC images with one channel (pixel values 0..16 scaled to
    0..255) and int64 labels, split into a stratified, seeded held-out part of ``test_fraction``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


@builtin_dataset(DIGITS)
def digits(*, val_from: str = "test", val_share: float | None = None, fraction: float = 1.0, seed: int = 0,
           device: torch.device | str | None = None, val_data: str | Path | None = None) -> Data:
    """The digits as ``Data`` (the held-out split is always the one of ``digits_arrays(seed=0)``, so test images
    stay the same across runs; ``seed`` only draws the validation and ``fraction`` samples). No augmentation:
    flipped or shifted 8x8 digits are other digits."""
    a = digits_arrays(0)
    return from_arrays(a["x_train"], a["y_train"], a["x_test"], a["y_test"], val_from=val_from, val_share=val_share,
                       fraction=fraction, seed=seed, device=device, num_classes=10, augment=False, origin=DIGITS,
                       val_data=val_data)


def train_base(model: nn.Module, data: Data, epochs: float = 10.0, *, batch_size: int = 64, lr: float = 0.05,
               seed: int = 0, device: torch.device | str | None = None) -> TrainLog:
    """Train ``model`` from scratch in place on ``data``'s training split with the fine-tune loop (SGD, cosine
    learning rate), e.g. the small CNN on the digits when no pretrained weights are given."""
    import torch

    from automc.compress.base import Task, TrainBudget
    from automc.compress.train import finetune

    dev = torch.device(device) if device is not None else data.device
    torch.manual_seed(seed)
    task = Task(data, 0.0, TrainBudget(epochs=epochs, batch_size=batch_size, lr=lr), dev, seed=seed)
    return finetune(model, task, epochs)
