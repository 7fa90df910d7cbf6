"""Image-classification data held as tensors (on the GPU when it fits) with a fast batch iterator.

Readers: CIFAR python batches (``cifar-10-batches-py``, ``cifar-100-python``; unpickled without running any
code), ``.npz`` files with ``x_train/y_train/x_test/y_test`` and optionally ``x_val/y_val`` (HWC), and
ImageFolder-style directories (``train/``, ``test/`` and optionally ``val/``, one folder per class; needs
Pillow). Three disjoint parts: ``"train"`` (fine-tuning), ``"val"`` (selection) and ``"test"`` (reporting).
The validation part is the data's own (``x_val``, ``val/`` or ``val_data``) when it has one; otherwise a
stratified, seeded share of the test part (images a pretrained model never saw), or with ``val_from="train"``
of the training part. ``Data.sources`` says which images each part holds.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from automc.errors import ValidationError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


@dataclass
class Data:
    """Images as uint8 NCHW tensors and int64 labels per split, plus the normalisation and augmentation.

    ``batches`` normalises (and for training augments: random crop with 4-pixel zero padding + horizontal
    flip) on the tensors' device, so no DataLoader is involved.
    """

    x: dict[str, torch.Tensor]  # split -> uint8 (N, C, H, W)
    y: dict[str, torch.Tensor]  # split -> int64 (N,)
    num_classes: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: bool = True
    crop_padding: int = 4
    # split -> which images it holds, e.g. "x_test[half 1 of 2, seed 0] of cifar10-subset.npz"
    sources: dict[str, str] = field(default_factory=dict)
    # training images the ``fraction`` sample was drawn from (None: all of them are in x["train"])
    train_pool: int | None = None

    @property
    def device(self) -> torch.device:
        return self.x["train"].device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x["train"].shape[1:])  # type: ignore[return-value]

    def size(self, split: str) -> int:
        return int(self.y[_split(split)].shape[0])

    def to(self, device: torch.device | str) -> Data:
        """A copy with every tensor on ``device``."""
        dev = torch.device(device)
        return replace(self, x={k: v.to(dev) for k, v in self.x.items()},
                       y={k: v.to(dev) for k, v in self.y.items()})

    def example_input(self, n: int = 1) -> torch.Tensor:
        """``n`` normalised training images (for tracing, FLOP counting and dependency graphs)."""
        return self.normalize(self.x["train"][:n])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = _mean_std(tuple(self.mean), tuple(self.std), x.device)
        return (x.float() / 255.0 - mean) / std

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, augment: bool | None = None,
                generator: torch.Generator | None = None, max_batches: int | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches: float normalised images and labels on the data's device.

        ``augment`` defaults to ``self.augment`` for ``"train"`` and False otherwise; ``generator`` (a
        ``torch.Generator`` on the data's device) makes shuffling and augmentation reproducible.
        """
        split = _split(split)
        xs, ys = self.x[split], self.y[split]
        n = ys.shape[0]
        if augment is None:
            augment = self.augment and split == "train"
        order = torch.randperm(n, device=xs.device, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i, start in enumerate(range(0, stop, batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
            xb, yb = xs[idx], ys[idx]
            if augment:
                xb = _augment(xb, self.crop_padding, generator)
            yield self.normalize(xb), yb

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return max(1, self.size(split) // batch_size) if self.size(split) >= batch_size else 1


@functools.lru_cache(maxsize=32)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation constants as (1, C, 1, 1) tensors on ``device``, built once: a fresh host-to-GPU copy every
    batch would make each step wait for the device."""
    with torch.inference_mode(False):  # plain tensors even when first built under inference mode
        return (torch.tensor(mean, device=device).view(1, -1, 1, 1),
                torch.tensor(std, device=device).view(1, -1, 1, 1))


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValidationError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}", field="split")
    return split


def _augment(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 NCHW batch, on its device."""
    b, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # b,h,1
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # b,1,w
        bidx = torch.arange(b, device=dev)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2)  # b,h,w,c -> b,c,h,w
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x).contiguous()


# -- building -----------------------------------------------------------------------------------------------

VAL_FROM = ("test", "train")
DEFAULT_VAL_SHARE = {"test": 0.5, "train": 0.1}  # half of the test part; the old 10% of the training part


@dataclass(frozen=True)
class _Part:
    """One image/label array pair as read, and where it came from (for messages and ``Data.sources``)."""

    x: np.ndarray
    y: np.ndarray
    xname: str  # "x_train", "train/", "data_batch_1..5"
    yname: str  # "y_train", "train/ labels", ...
    path: str  # the file or folder it was read from
    classes: tuple[str, ...] | None = None  # class folder names, for image folders

    def source(self, qualifier: str = "") -> str:
        """Human-readable origin, e.g. ``x_test[half 1 of 2, seed 0] of cifar10-subset.npz``."""
        return f"{self.xname}{f'[{qualifier}]' if qualifier else ''} of {Path(self.path).name}"

    def error(self, problem: str, *, labels: bool = False) -> ValidationError:
        return ValidationError(f"{self.yname if labels else self.xname}: {problem}", path=self.path)


def from_arrays(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                x_val: np.ndarray | None = None, y_val: np.ndarray | None = None, val_from: str = "test",
                val_share: float | None = None, fraction: float = 1.0, seed: int = 0,
                device: torch.device | str | None = None, num_classes: int | None = None,
                mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                augment: bool = True, channels_last_input: bool = True, origin: str = "arrays",
                val_data: str | Path | None = None) -> Data:
    """Build ``Data`` from image arrays (NHWC when ``channels_last_input``, else NCHW; uint8, or floats in
    0..1 or 0..255) and integer labels.

    The validation part is ``x_val/y_val`` when given; otherwise a stratified seeded ``val_share`` (default
    0.5) of the test part with the rest kept for test, or with ``val_from="train"`` a share (default 0.1) of
    the training part. ``fraction`` keeps a stratified seeded sample of what is left for training. ``device``
    defaults to CUDA when available; data larger than half the free GPU memory stays on the CPU. Raises
    ``ValidationError`` naming the array and the problem. ``val_data`` reads the validation part from a file or
    folder (as ``load_data`` does) instead of ``x_val/y_val``.
    """
    if (x_val is None) != (y_val is None):
        raise ValidationError("give both x_val and y_val, or neither", path=origin)
    parts = {"train": _Part(x_train, y_train, "x_train", "y_train", origin),
             "test": _Part(x_test, y_test, "x_test", "y_test", origin)}
    if x_val is not None:
        parts["val"] = _Part(x_val, y_val, "x_val", "y_val", origin)  # type: ignore[arg-type]
    elif val_data is not None:
        parts["val"] = _guarded(Path(val_data), lambda q: _read_val(q, Path(origin), parts))
    return _build(parts, val_from=val_from, val_share=val_share, fraction=fraction, seed=seed, device=device,
                  num_classes=num_classes, mean=mean, std=std, augment=augment,
                  channels_last=channels_last_input)


def _build(parts: dict[str, _Part], *, val_from: str, val_share: float | None, fraction: float, seed: int,
           device: torch.device | str | None, num_classes: int | None, mean: tuple[float, ...],
           std: tuple[float, ...], augment: bool, channels_last: bool = True) -> Data:
    explicit = "val" in parts
    share = _check_options(parts, val_from, val_share, fraction, seed)
    xs = _images(parts, channels_last)
    ys = {k: _labels(p, len(xs[k])) for k, p in parts.items()}
    nc = _check_classes(parts, ys, num_classes)
    if explicit:
        _check_not_a_copy(parts, xs)

    rng_val, rng_fit = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    pool, test_idx = np.arange(len(ys["train"])), np.arange(len(ys["test"]))
    seeded = f"seed {seed}"
    train_q: list[str] = []
    if explicit:
        val_x, val_y, val_src = xs["val"], ys["val"], parts["val"].source()
        test_src = parts["test"].source()
    elif val_from == "test":
        val_idx, test_idx = stratified_split(ys["test"], share, rng_val)
        if not len(val_idx) or not len(test_idx):
            raise parts["test"].error(f"{len(test_idx) + len(val_idx)} image(s) are too few to split into "
                                      "validation and test; give a validation part (x_val, val/ or val_data)")
        val_x, val_y = xs["test"][val_idx], ys["test"][val_idx]
        q = ("half 1 of 2", "half 2 of 2") if share == 0.5 else (f"stratified {_pct(share)}",
                                                                  f"other {_pct(1 - share)}")
        val_src = parts["test"].source(f"{q[0]}, {seeded}")
        test_src = parts["test"].source(f"{q[1]}, {seeded}")
    else:
        val_idx = stratified_sample(ys["train"], share, rng_val) if share > 0 else np.zeros(0, np.int64)
        pool = np.setdiff1d(pool, val_idx)
        if not len(pool):
            raise parts["train"].error("no training images left after carving out the validation part")
        if (gone := np.setdiff1d(ys["train"], ys["train"][pool])).size:
            raise parts["train"].error(f"class(es) {_ids(gone)} have too few images to carve out a validation "
                                       f"share of {_pct(share)}: none would be left for training", labels=True)
        val_x, val_y = xs["train"][val_idx], ys["train"][val_idx]
        val_src = parts["train"].source(f"stratified {_pct(share)}, {seeded}") if share > 0 else "none"
        test_src = parts["test"].source()
        if share > 0:
            train_q.append("minus val")
    train_pool = len(pool)
    if fraction < 1.0:
        pool = pool[stratified_sample(ys["train"][pool], fraction, rng_fit)]
        train_q.append(f"stratified {_pct(fraction)}")
    train_src = parts["train"].source(", ".join([*train_q, seeded]) if train_q else "")

    dev = torch.device(device) if device is not None else default_device()
    total = sum(a.nbytes for a in xs.values())
    if dev.type == "cuda" and total > 0.5 * torch.cuda.mem_get_info(dev)[0]:
        dev = torch.device("cpu")  # too big for the GPU: keep it in host memory, batches move one at a time

    def imgs(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous().to(dev)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    x = {"train": imgs(xs["train"][pool]), "val": imgs(val_x), "test": imgs(xs["test"][test_idx])}
    y = {"train": labels(ys["train"][pool]), "val": labels(val_y), "test": labels(ys["test"][test_idx])}
    channels = x["train"].shape[1]
    if len(mean) != channels or len(std) != channels:
        mean, std = (0.5,) * channels, (0.25,) * channels
    sources = {"train": train_src, "val": val_src, "test": test_src}
    return Data(x, y, nc, tuple(mean), tuple(std), augment, sources=sources, train_pool=train_pool)


def _pct(share: float) -> str:
    return f"{share * 100:.3g}%"


def _check_options(parts: dict[str, _Part], val_from: str, val_share: float | None, fraction: float,
                   seed: int) -> float:
    """Validate the split options; returns the validation share to use."""
    if val_from not in VAL_FROM:
        raise ValidationError(f"must be 'test' or 'train', got {val_from!r}", field="val_from")
    if not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
        raise ValidationError(f"must be in (0, 1], got {fraction}", field="fraction")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValidationError(f"must be an integer ≥ 0, got {seed!r}", field="seed")
    if "val" in parts:
        if val_from == "train":
            raise ValidationError(f"the data has its own validation part ({parts['val'].source()}); "
                                  "val_from='train' would ignore it", field="val_from")
        return 0.0
    share = DEFAULT_VAL_SHARE[val_from] if val_share is None else val_share
    ok = 0.0 < share < 1.0 if val_from == "test" else 0.0 <= share < 1.0
    if not isinstance(share, int | float) or not ok:
        bounds = "(0, 1)" if val_from == "test" else "[0, 1)"
        raise ValidationError(f"must be in {bounds} with val_from={val_from!r}, got {share}", field="val_share")
    return float(share)


def _labels(part: _Part, n: int) -> np.ndarray:
    """The part's labels as int64 class ids, or a ``ValidationError`` naming the array."""
    y = np.asarray(part.y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.ravel()
    if y.ndim != 1:
        raise part.error(f"labels must be a 1-D array of class ids, got shape {y.shape}", labels=True)
    if y.dtype.kind not in "iuf":
        raise part.error(f"labels must be integer class ids, got dtype {y.dtype}", labels=True)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise part.error(f"labels must be whole numbers, found {y[bad][0]!r}", labels=True)
    if y.size and (y.min() < 0 or y.max() > 2**31):
        raise part.error(f"labels must be class ids 0..C-1, found {y.min() if y.min() < 0 else y.max()}",
                         labels=True)
    if len(y) != n:
        raise part.error(f"{n} images but {len(y)} labels in {part.yname}")
    return y.astype(np.int64)


def _images(parts: dict[str, _Part], channels_last: bool) -> dict[str, np.ndarray]:
    """Every part's images as uint8 NHWC of one shape, or a ``ValidationError`` naming the array."""
    raw: dict[str, np.ndarray] = {}
    for k, p in parts.items():
        x = np.asarray(p.x)
        if x.ndim != 4:
            raise p.error(f"images must be a 4-D array (N, H, W, C), got shape {x.shape}")
        if not channels_last:
            x = x.transpose(0, 2, 3, 1)
        if len(x) == 0:
            raise p.error("no images (empty array)")
        if x.dtype.kind not in "iuf":
            raise p.error(f"images must be uint8 (or floats in 0..1 / 0..255), got dtype {x.dtype}")
        if not 1 <= x.shape[3] <= 4:
            hint = "; it looks channels-first (N, C, H, W): store images as (N, H, W, C)" \
                if x.shape[1] in (1, 3) else ""
            raise p.error(f"expected (N, H, W, C) images with 1 to 4 channels, got shape {x.shape}{hint}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise p.error("images contain NaN or infinite values")
        raw[k] = x
    ref = parts["train"]
    for k, x in raw.items():
        if x.shape[1:] != raw["train"].shape[1:]:
            raise parts[k].error(f"{_hwc(x)} images, but {ref.source()} has {_hwc(raw['train'])} images")
    floats = [x for x in raw.values() if x.dtype.kind == "f"]
    scale = 255.0 if floats and max(float(x.max()) for x in floats) <= 1.0 else 1.0
    out = {}
    for k, x in raw.items():
        lo, hi = float(x.min()), float(x.max())
        s = scale if x.dtype.kind == "f" else 1.0
        if lo < 0 or hi * s > 255.0 + 1e-6:
            raise parts[k].error(f"pixel values must lie in 0..255 (or 0..1 as floats), found {lo:g}..{hi:g}")
        out[k] = x if x.dtype == np.uint8 else np.clip(np.rint(x * s), 0, 255).astype(np.uint8)
    return out


def _hwc(x: np.ndarray) -> str:
    return "x".join(str(d) for d in x.shape[1:])


def _check_classes(parts: dict[str, _Part], ys: dict[str, np.ndarray], num_classes: int | None) -> int:
    """The class count; every part's labels must be classes the training part has.

    Derived from the data (``num_classes`` None), the classes are 0..C-1 and each has training images; only a
    caller that states ``num_classes`` may leave classes without any."""
    train = np.unique(ys["train"])
    if len(train) < 2:
        raise parts["train"].error(f"needs at least 2 classes, found {len(train)}", labels=True)
    folders = parts["train"].classes
    nc = int(num_classes) if num_classes is not None else len(folders) if folders else int(train.max()) + 1
    if num_classes is None and (missing := np.setdiff1d(np.arange(nc), train)).size:
        raise parts["train"].error(_no_images(missing, train, folders), labels=True)
    for k, y in ys.items():
        if y.size and y.max() >= nc:
            whose = f"the training data's {nc} classes" if num_classes is None else f"{nc} classes"
            raise parts[k].error(f"label {int(y.max())} is outside 0..{nc - 1} ({whose})", labels=True)
    for k in ("test", "val"):
        if k not in ys:
            continue
        have = np.unique(ys[k])
        extra = np.setdiff1d(have, train)
        if extra.size:
            raise parts[k].error(f"label(s) {_ids(extra)} never occur in {parts['train'].yname} "
                                 f"(training classes: {_ids(train)})", labels=True)
        if k == "val" and (missing := np.setdiff1d(train, have)).size:
            raise parts[k].error(f"lacks class(es) {_ids(missing)} of the training data ({len(train)} classes: "
                                 f"{_ids(train)}); a validation part must cover the same classes", labels=True)
    return nc


def _no_images(missing: np.ndarray, found: np.ndarray, folders: tuple[str, ...] | None) -> str:
    """Which classes of 0..C-1 have no training images (by folder name for image folders)."""
    if folders:
        names = [folders[int(i)] for i in missing]
        return f"class folder(s) {', '.join(names[:8])}{', ...' if len(names) > 8 else ''} have no images"
    return (f"labels must be 0..C-1; class(es) {_ids(missing)} have no images (labels found: {_ids(found)}; "
            f"number the {len(found)} classes 0..{len(found) - 1})")


def _ids(a: np.ndarray) -> str:
    a = [int(v) for v in a]
    if len(a) > 2 and a == list(range(a[0], a[-1] + 1)):
        return f"{a[0]}..{a[-1]}"
    return ", ".join(map(str, a[:8])) + (", ..." if len(a) > 8 else "")


def _check_not_a_copy(parts: dict[str, _Part], xs: dict[str, np.ndarray]) -> None:
    """An explicit validation part that mostly repeats the test images would make test accuracy a selected one."""
    test = {hashlib.blake2b(im.tobytes(), digest_size=16).digest() for im in xs["test"]}
    same = sum(hashlib.blake2b(im.tobytes(), digest_size=16).digest() in test for im in xs["val"])
    if same > len(xs["val"]) // 2:
        raise parts["val"].error(f"{same} of its {len(xs['val'])} images are test images "
                                 f"({parts['test'].source()}); select on images the test part does not hold")


def stratified_sample(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a stratified sample: ``round(fraction * n_c)`` of each class (at least 1)."""
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx)))) if fraction > 0 else 0
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def stratified_split(labels: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(a, b)`` of a stratified seeded split: ``share`` of each class in ``a`` (rounding half
    down, so an odd class leaves the extra image to ``b``), the rest in ``b``."""
    a = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(0, math.ceil(share * len(idx) - 0.5)))
        a.append(rng.choice(idx, size=k, replace=False))
    first = np.sort(np.concatenate(a)) if a else np.zeros(0, np.int64)
    return first, np.setdiff1d(np.arange(len(labels)), first)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- reading ------------------------------------------------------------------------------------------------

BUILTIN_DATASETS: dict[str, Callable[..., Data]] = {}
"""Datasets ``load_data`` reads by name when no such path exists: name -> loader taking ``val_from``,
``val_share``, ``fraction``, ``seed`` and ``device``. ``compress.builtin`` registers ``digits``."""


def builtin_dataset(name: str) -> Callable[[Callable[..., Data]], Callable[..., Data]]:
    """Decorator: register a loader in ``BUILTIN_DATASETS`` under ``name``."""
    def register(loader: Callable[..., Data]) -> Callable[..., Data]:
        BUILTIN_DATASETS[name] = loader
        return loader
    return register


def load_data(path: str | Path, *, val_data: str | Path | None = None, val_from: str = "test",
              val_share: float | None = None, fraction: float = 1.0, seed: int = 0,
              device: torch.device | str | None = None, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD, augment: bool = True) -> Data:
    """Read a dataset from ``path`` (``.npz``, CIFAR-10/100 python batches, or an ImageFolder tree), or the
    built-in one of that name (``BUILTIN_DATASETS``, e.g. ``digits``) when no such path exists.

    The validation part is, in this order: ``val_data`` (a ``.npz`` with ``x_val/y_val`` or ``x_test/y_test``,
    or an image folder), the data's own (``x_val/y_val``, ``val/`` next to ``train/`` and ``test/``), or a
    stratified seeded ``val_share`` of the test part (``val_from="test"``, default half) or of the training
    part (``val_from="train"``, default 10%; biased for a model trained on those images). ``fraction``
    samples the training part only. Raises ``ValidationError`` naming the file, the array and the problem.
    """
    loader = BUILTIN_DATASETS.get(str(path)) if is_builtin(path) else None
    if loader is not None:  # a real path of that name is still read as data
        extra = {} if val_data is None else {"val_data": val_data}  # a user's validation set, checked as any
        return loader(val_from=val_from, val_share=val_share, fraction=fraction, seed=seed, device=device, **extra)
    p = Path(path)
    parts = _guarded(p, _read_dataset)
    if val_data is not None:
        parts["val"] = _guarded(Path(val_data), lambda q: _read_val(q, p, parts))
    return _build(parts, val_from=val_from, val_share=val_share, fraction=fraction, seed=seed, device=device,
                  num_classes=None, mean=mean, std=std, augment=augment)


def is_builtin(path: str | Path | None) -> bool:
    """``path`` names a registered built-in dataset and no file or folder of that name exists."""
    return str(path) in BUILTIN_DATASETS and not Path(path).exists()


def dataset_name(path: str | Path) -> str:
    """How a task names its data: the built-in's name, else the file or folder name (``.`` named as the folder)."""
    return str(path) if is_builtin(path) else Path(os.path.abspath(path)).name


def _guarded(p: Path, read):  # noqa: ANN001, ANN202 - a reader of p
    """Run ``read(p)``; any failure of an untrusted file becomes a ``ValidationError`` naming it."""
    if not p.exists():
        raise ValidationError("data path not found", path=str(p))
    try:
        return read(p)
    except ValidationError:
        raise
    except MemoryError:
        raise ValidationError("not enough memory to read this data", path=str(p)) from None
    except Exception as e:  # noqa: BLE001 - a broken or hostile file must not end in a traceback
        raise ValidationError(f"cannot read data ({type(e).__name__}: {str(e)[:120]})", path=str(p)) from None


def _read_dataset(p: Path) -> dict[str, _Part]:
    if p.is_file():
        if p.suffix != ".npz":
            raise ValidationError("expected a .npz file or a dataset directory", path=str(p))
        return _read_npz(p)
    if not p.is_dir():
        raise ValidationError("not a file or directory", path=str(p))
    for cand in (p, p / "cifar-10-batches-py", p / "cifar-100-python"):
        if (cand / "data_batch_1").is_file():
            return _read_cifar10(cand)
        if (cand / "train").is_file() and (cand / "test").is_file():
            return _read_cifar100(cand)
    if (p / "train").is_dir() and ((p / "test").is_dir() or (p / "val").is_dir()):
        return _read_image_folders(p)
    raise ValidationError("no dataset found (expected .npz, cifar-10-batches-py, cifar-100-python, or "
                          "train/ + test/ class folders)", path=str(p))


def _open_npz(p: Path) -> np.lib.npyio.NpzFile:
    z = np.load(p, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValidationError("not an .npz archive (a single .npy array?)", path=str(p))
    return z


def _read_npz(p: Path) -> dict[str, _Part]:
    with _open_npz(p) as z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise ValidationError(f"missing array(s) {', '.join(missing)} (has: {', '.join(z.files) or 'none'})",
                                  path=str(p))
        splits = ("train", "test", "val") if "x_val" in z.files or "y_val" in z.files else ("train", "test")
        if "val" in splits and not {"x_val", "y_val"} <= set(z.files):
            raise ValidationError("has only one of x_val and y_val; give both or neither", path=str(p))
        return {s: _Part(z[f"x_{s}"], z[f"y_{s}"], f"x_{s}", f"y_{s}", str(p)) for s in splits}


def _read_val(q: Path, data_path: Path, parts: dict[str, _Part]) -> _Part:
    """The validation part named by ``val_data``: x_val/y_val (else x_test/y_test) of a .npz, or image folders."""
    same = q.resolve() == data_path.resolve()
    if q.is_file():
        if q.suffix != ".npz":
            raise ValidationError("expected a .npz file or an image folder", path=str(q))
        with _open_npz(q) as z:
            for s in ("val", "test"):
                if {f"x_{s}", f"y_{s}"} <= set(z.files):
                    if same and s == "test":
                        raise ValidationError("x_test of the data file is its test part; validation needs other "
                                              "images (x_val, or another file)", path=str(q))
                    return _Part(z[f"x_{s}"], z[f"y_{s}"], f"x_{s}", f"y_{s}", str(q))
        raise ValidationError("needs arrays x_val/y_val (or x_test/y_test)", path=str(q))
    root = next((q / d for d in ("val", "test") if (q / d).is_dir()), q)
    if same and root.name == "test":
        raise ValidationError("test/ of the data folder is its test part; validation needs other images",
                              path=str(q))
    train = parts["train"]
    classes = train.classes or tuple(sorted(c.name for c in root.iterdir() if c.is_dir()))
    x, y = _read_folder(root, classes, (train.x.shape[2], train.x.shape[1]) if train.x.ndim == 4 else None)
    name = f"{root.name}/" if root != q else "class folders"
    return _Part(x, y, name, f"{name} labels", str(q), classes)


# CIFAR python batches are pickles; only what they hold may be rebuilt, so no file can run code on load.
# _frombuffer is how numpy pickles arrays at protocol 5; scalar rebuilds numpy numbers (labels as np.int64).
_NUMPY_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                  ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
                  ("numpy._core.numeric", "_frombuffer"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar")}


class _Refused(pickle.UnpicklingError):
    pass


def _latin1(text: object, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2, for latin-1 only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("_codecs.encode")
    return text.encode("latin1")


class _BatchUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, tuples, bytes, str, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if (module, name) not in _NUMPY_GLOBALS:
            raise _Refused(f"{module}.{name}")
        import importlib

        for mod in (module.replace("numpy.core.", "numpy._core."), module):
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: object) -> object:
        raise _Refused("a persistent id")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise ValidationError(f"refusing to unpickle {e} (a CIFAR batch holds only dicts, lists, strings, numbers "
                              "and numpy arrays)", path=str(path)) from None
    if not isinstance(obj, dict):
        raise ValidationError(f"expected a dict of arrays, got {type(obj).__name__}", path=str(path))
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _cifar_part(d: dict, key: bytes, xname: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in d or key not in d:
        raise ValidationError(f"a CIFAR batch needs 'data' and {key.decode()!r}", path=str(path))
    data = np.asarray(d[b"data"])
    if data.dtype.kind not in "iu" or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValidationError(f"{xname}: 'data' must be N x 3072 integers, got {data.dtype} {data.shape}",
                              path=str(path))
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[key])


def _read_cifar10(d: Path) -> dict[str, _Part]:
    names = [f"data_batch_{i}" for i in range(1, 6) if (d / f"data_batch_{i}").is_file()]
    train = [_cifar_part(_unpickle(d / n), b"labels", n, d / n) for n in names]
    xte, yte = _cifar_part(_unpickle(d / "test_batch"), b"labels", "test_batch", d / "test_batch")
    tr_name = names[0] if len(names) == 1 else f"{names[0]}..{names[-1][-1]}"
    return {"train": _Part(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                           tr_name, f"{tr_name} labels", str(d)),
            "test": _Part(xte, yte, "test_batch", "test_batch labels", str(d))}


def _read_cifar100(d: Path) -> dict[str, _Part]:
    xtr, ytr = _cifar_part(_unpickle(d / "train"), b"fine_labels", "train", d / "train")
    xte, yte = _cifar_part(_unpickle(d / "test"), b"fine_labels", "test", d / "test")
    return {"train": _Part(xtr, ytr, "train", "train fine_labels", str(d)),
            "test": _Part(xte, yte, "test", "test fine_labels", str(d))}


def _read_image_folders(root: Path) -> dict[str, _Part]:
    """``train/`` + ``test/`` (+ ``val/``) class folders; without ``test/``, ``val/`` is the test part."""
    dirs = {"train": root / "train"}
    if (root / "test").is_dir():
        dirs["test"] = root / "test"
        if (root / "val").is_dir():
            dirs["val"] = root / "val"
    else:
        dirs["test"] = root / "val"  # an ImageNet-style tree: val/ is the held-out part
    classes = tuple(sorted(c.name for c in dirs["train"].iterdir() if c.is_dir()))
    if not classes:
        raise ValidationError("no class folders", path=str(dirs["train"]))
    out: dict[str, _Part] = {}
    size: tuple[int, int] | None = None
    for split, d in dirs.items():
        x, y = _read_folder(d, classes, size)
        size = size or (x.shape[2], x.shape[1])
        out[split] = _Part(x, y, f"{d.name}/", f"{d.name}/ labels", str(root), classes)
    return out


def _read_folder(root: Path, classes: tuple[str, ...], size: tuple[int, int] | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Images of one folder per class (labels = index in ``classes``), resized to ``size`` (W, H) or the first."""
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError:
        raise ValidationError("reading an image-folder dataset needs Pillow (pip install pillow)",
                              path=str(root)) from None
    extra = sorted(c.name for c in root.iterdir() if c.is_dir() and c.name not in classes)
    if extra:
        raise ValidationError(f"class folder(s) {', '.join(extra[:5])} are not training classes "
                              f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})", path=str(root))
    xs, ys = [], []
    for label, c in enumerate(classes):
        for f in sorted((root / c).glob("*")) if (root / c).is_dir() else []:
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                continue
            with Image.open(f) as im:
                im = im.convert("RGB")
                size = size or im.size
                xs.append(np.asarray(im.resize(size) if im.size != size else im, np.uint8))
            ys.append(label)
    if not xs:
        raise ValidationError("no images found", path=str(root))
    return np.stack(xs), np.asarray(ys)


def synthetic(num_classes: int = 4, per_class: int = 48, *, size: int = 16, test_per_class: int = 24,
              seed: int = 0, device: torch.device | str | None = "cpu", val_fraction: float = 0.15) -> Data:
    """A small learnable dataset for tests: each class has its own tint and stripe pattern, plus noise.

    The validation part is a stratified ``val_fraction`` of the generated training images (the tests train
    their model on the rest, so it never saw them); the test part is generated apart.
    """
    rng = np.random.default_rng(seed)
    tints = rng.uniform(60, 200, (num_classes, 3))
    yy, xx = np.mgrid[0:size, 0:size]

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(num_classes), n)
        imgs = np.empty((len(labels), size, size, 3), np.float64)
        for i, c in enumerate(labels):
            angle = np.pi * c / num_classes
            stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / 4 + rng.uniform(0, 6.3))
            imgs[i] = tints[c] + 40 * stripes[..., None] + rng.normal(0, 30, (size, size, 3))
        return np.clip(imgs, 0, 255).astype(np.uint8), labels

    xtr, ytr = make(per_class)
    xte, yte = make(test_per_class)
    return from_arrays(xtr, ytr, xte, yte, val_from="train", val_share=val_fraction, seed=seed, device=device,
                       num_classes=num_classes, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), origin="synthetic")
