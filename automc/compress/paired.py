"""Two models compared on the same test images: per-image correctness, kept as packed bits with a hash of the images,
and the exact McNemar test on the discordant pairs (statsmodels)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from automc.errors import ValidationError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from automc.compress.data import Data


def per_image_correct(model: nn.Module, data: Data, split: str = "test", *,
                      device: torch.device | str | None = None, batch_size: int = 500) -> np.ndarray:
    """Whether ``model``'s top-1 prediction is right, image by image, on ``split`` (a bool array in split order)."""
    from automc.compress import train  # the module, not the function: one path for every prediction

    logits = train.predict(model, data, split, batch_size=batch_size, device=device)
    y = data.y[split][: logits.shape[0]].cpu()
    return (logits.argmax(1) == y).numpy().astype(bool)


def images_hash(data: Data, split: str = "test") -> str:
    """A hash of ``split``'s images and labels (their bytes, in order): two evaluations are compared only when their
    hashes agree."""
    digest = hashlib.sha256()
    for t in (data.x[split], data.y[split]):
        a = t.detach().cpu().contiguous().numpy()
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:32]


def encode_bits(correct: np.ndarray) -> str:
    """A bool array as ``"<n>:<base64 of np.packbits>"`` (the length first: packing pads to whole bytes)."""
    a = np.asarray(correct, dtype=bool).ravel()
    return f"{a.size}:{base64.b64encode(np.packbits(a)).decode('ascii')}"


def decode_bits(text: str) -> np.ndarray:
    """The bool array ``encode_bits`` wrote; raises ``ValidationError`` for anything else."""
    n, sep, payload = str(text).partition(":")
    try:
        if not sep or not n.isdigit():
            raise ValueError("no length")
        packed = np.frombuffer(base64.b64decode(payload, validate=True), dtype=np.uint8)
        if packed.size != (int(n) + 7) // 8:
            raise ValueError("length and bits disagree")
    except ValueError as e:
        raise ValidationError(f"not per-image correctness bits ({e})", field="test_correct_bits") from None
    return np.unpackbits(packed, count=int(n)).astype(bool)


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two models on the same images: ``b01`` images only B gets right, ``b10`` only A;
    ``statistic`` is min(b01, b10), ``p_value`` two-sided."""

    b01: int
    b10: int
    statistic: float
    p_value: float
    exact: bool = True
    n: int = 0  # images compared


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    """The exact (binomial) McNemar test of A's against B's per-image correctness on the same images."""
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    a, b = np.asarray(a_correct, dtype=bool).ravel(), np.asarray(b_correct, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValidationError(f"the two models were measured on different numbers of images ({a.size} and {b.size})")
    b01, b10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
    table = [[int(np.sum(a & b)), b10], [b01, int(np.sum(~a & ~b))]]
    res = _mcnemar(table, exact=True)
    return McNemar(b01, b10, float(res.statistic), float(res.pvalue), True, int(a.size))


def compare_evaluations(a: Mapping[str, Any], b: Mapping[str, Any]) -> McNemar:
    """McNemar of two stored evaluations (rows with ``test_correct_bits`` and ``test_ids_hash``); raises
    ``ValidationError`` when either has no per-image test record or they were measured on different images."""
    for row in (a, b):
        if not row.get("test_correct_bits"):
            raise ValidationError(f"evaluation {row.get('id')} has no per-image test record (a search step, or "
                                  f"stored before it was kept)", field="test_correct_bits")
    if a.get("test_ids_hash") != b.get("test_ids_hash"):
        raise ValidationError(f"evaluations {a.get('id')} and {b.get('id')} were measured on different test images",
                              field="test_ids_hash")
    return mcnemar(decode_bits(a["test_correct_bits"]), decode_bits(b["test_correct_bits"]))
