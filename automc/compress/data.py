"""Image-classification data held as tensors (on the GPU when it fits) with a fast batch iterator.

Readers: CIFAR python batches (``cifar-10-batches-py``, ``cifar-100-python``), ``.npz`` files with
``x_train/y_train/x_test/y_test`` (HWC uint8), and ImageFolder-style directories (``train/`` and ``test/``
or ``val/`` of one folder per class; needs Pillow). The training part is split deterministically into a
fine-tune subset (``"train"``) and a validation subset (``"val"``); ``fraction`` keeps a stratified, seeded
sample of it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
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
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
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

def from_arrays(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                val_fraction: float = 0.1, fraction: float = 1.0, seed: int = 0,
                device: torch.device | str | None = None, num_classes: int | None = None,
                mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                augment: bool = True, channels_last_input: bool = True) -> Data:
    """Build ``Data`` from uint8 image arrays (NHWC when ``channels_last_input``, else NCHW) and int labels.

    ``fraction`` keeps a stratified seeded sample of the training part; ``val_fraction`` of what remains
    (stratified, seeded) becomes the validation split. ``device`` defaults to CUDA when available; data
    larger than half the free GPU memory stays on the CPU.
    """
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    y_train = np.asarray(y_train).astype(np.int64).ravel()
    y_test = np.asarray(y_test).astype(np.int64).ravel()
    if x_train.ndim != 4 or x_test.ndim != 4:
        raise ValidationError(f"images must be 4-D arrays, got {x_train.shape} and {x_test.shape}", field="x")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValidationError("images and labels differ in length", field="y")
    if not 0.0 < fraction <= 1.0:
        raise ValidationError(f"fraction must be in (0, 1], got {fraction}", field="fraction")
    if not 0.0 <= val_fraction < 1.0:
        raise ValidationError(f"val_fraction must be in [0, 1), got {val_fraction}", field="val_fraction")
    if x_train.dtype != np.uint8:
        scale = 255.0 if max(x_train.max(), x_test.max()) <= 1.0 else 1.0
        x_train = np.clip(np.rint(x_train * scale), 0, 255).astype(np.uint8)
        x_test = np.clip(np.rint(x_test * scale), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    keep = stratified_sample(y_train, fraction, rng) if fraction < 1.0 else np.arange(len(y_train))
    val = stratified_sample(y_train[keep], val_fraction, rng) if val_fraction > 0 else np.zeros(0, np.int64)
    is_val = np.zeros(len(keep), bool)
    is_val[val] = True
    tr_idx, va_idx = keep[~is_val], keep[is_val]
    nc = num_classes or int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and (x_train.nbytes + x_test.nbytes) > 0.5 * torch.cuda.mem_get_info(dev)[0]:
        dev = torch.device("cpu")  # too big for the GPU: keep it in host memory, batches move one at a time

    def imgs(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.permute(0, 3, 1, 2) if channels_last_input else t).contiguous().to(dev)

    x = {"train": imgs(x_train[tr_idx]), "val": imgs(x_train[va_idx]), "test": imgs(x_test)}
    y = {"train": torch.from_numpy(y_train[tr_idx]).to(dev), "val": torch.from_numpy(y_train[va_idx]).to(dev),
         "test": torch.from_numpy(y_test).to(dev)}
    if len(mean) != x["train"].shape[1]:
        mean, std = (0.5,) * x["train"].shape[1], (0.25,) * x["train"].shape[1]
    return Data(x, y, nc, tuple(mean), tuple(std), augment)


def stratified_sample(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a stratified sample: ``round(fraction * n_c)`` of each class (at least 1)."""
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx)))) if fraction > 0 else 0
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_data(path: str | Path, *, val_fraction: float = 0.1, fraction: float = 1.0, seed: int = 0,
              device: torch.device | str | None = None, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD, augment: bool = True) -> Data:
    """Read a dataset from ``path`` (``.npz``, CIFAR-10/100 python batches, or an ImageFolder tree).

    Raises ``ValidationError`` naming the path when it is missing or in no known layout.
    """
    if str(path) == "digits" and not Path(path).exists():  # reserved: the built-in digits (compress.builtin)
        from automc.compress.builtin import digits

        return digits(val_fraction=val_fraction, fraction=fraction, seed=seed, device=device)
    p = Path(path)
    if not p.exists():
        raise ValidationError("data path not found", path=str(p))
    try:
        arrays = _read_arrays(p)
    except ValidationError:
        raise
    except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as e:
        raise ValidationError(f"cannot read data ({type(e).__name__}: {str(e)[:120]})", path=str(p)) from None
    return from_arrays(*arrays, val_fraction=val_fraction, fraction=fraction, seed=seed, device=device,
                       mean=mean, std=std, augment=augment)


def _read_arrays(p: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if p.is_file():
        if p.suffix != ".npz":
            raise ValidationError("expected a .npz file or a dataset directory", path=str(p))
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
            if missing:
                raise ValidationError(f"missing array(s) {', '.join(missing)}", path=str(p))
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    for cand in (p, p / "cifar-10-batches-py", p / "cifar-100-python"):
        if (cand / "data_batch_1").is_file():
            return _read_cifar10(cand)
        if (cand / "train").is_file() and (cand / "test").is_file():
            return _read_cifar100(cand)
    train = p / "train"
    test = next((p / d for d in ("test", "val") if (p / d).is_dir()), None)
    if train.is_dir() and test is not None:
        return _read_image_folder(train, test)
    raise ValidationError("no dataset found (expected .npz, cifar-10-batches-py, cifar-100-python, or "
                          "train/ + test/ class folders)", path=str(p))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")  # noqa: S301 - CIFAR's own format


def _cifar_images(d: dict) -> np.ndarray:
    return np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _read_cifar10(d: Path) -> tuple[np.ndarray, ...]:
    parts = [_unpickle(d / f"data_batch_{i}") for i in range(1, 6) if (d / f"data_batch_{i}").is_file()]
    test = _unpickle(d / "test_batch")
    return (np.concatenate([_cifar_images(b) for b in parts]),
            np.concatenate([np.asarray(b[b"labels"]) for b in parts]),
            _cifar_images(test), np.asarray(test[b"labels"]))


def _read_cifar100(d: Path) -> tuple[np.ndarray, ...]:
    tr, te = _unpickle(d / "train"), _unpickle(d / "test")
    return (_cifar_images(tr), np.asarray(tr[b"fine_labels"]),
            _cifar_images(te), np.asarray(te[b"fine_labels"]))


def _read_image_folder(train: Path, test: Path) -> tuple[np.ndarray, ...]:
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError:
        raise ValidationError("reading an image-folder dataset needs Pillow (pip install pillow)",
                              path=str(train.parent)) from None
    classes = sorted(c.name for c in train.iterdir() if c.is_dir())
    if not classes:
        raise ValidationError("no class folders", path=str(train))
    size: tuple[int, int] | None = None

    def read(root: Path) -> tuple[np.ndarray, np.ndarray]:
        nonlocal size
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

    xtr, ytr = read(train)
    xte, yte = read(test)
    return xtr, ytr, xte, yte


def synthetic(num_classes: int = 4, per_class: int = 48, *, size: int = 16, test_per_class: int = 24,
              seed: int = 0, device: torch.device | str | None = "cpu", val_fraction: float = 0.15) -> Data:
    """A small learnable dataset for tests: each class has its own tint and stripe pattern, plus noise."""
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
    return from_arrays(xtr, ytr, xte, yte, val_fraction=val_fraction, seed=seed, device=device,
                       num_classes=num_classes, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
