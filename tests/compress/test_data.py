import pickle

import numpy as np
import pytest
import torch

from automc.compress.data import _augment, from_arrays, load_data
from automc.errors import ValidationError


def _arrays(n=60, classes=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    return x, y


def test_npz_splits_are_disjoint_stratified_and_deterministic(tmp_path):
    x, y = _arrays(200, 4)
    xt, yt = _arrays(40, 4, seed=1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    a = load_data(tmp_path / "d.npz", val_fraction=0.2, device="cpu")
    b = load_data(tmp_path / "d.npz", val_fraction=0.2, device="cpu")
    assert a.size("train") + a.size("val") == 200 and a.size("test") == 40
    assert torch.bincount(a.y["val"]).tolist() == [10, 10, 10, 10]
    assert torch.equal(a.x["val"], b.x["val"])
    assert a.x["train"].shape[1:] == (3, 8, 8) and a.x["train"].dtype == torch.uint8
    # train and val come from different images
    tr = {bytes(t.numpy()) for t in a.x["train"]}
    assert not any(bytes(t.numpy()) in tr for t in a.x["val"])


def test_fraction_is_a_stratified_sample():
    x, y = _arrays(400, 4)
    d = from_arrays(x, y, x[:10], y[:10], fraction=0.1, val_fraction=0.0, device="cpu")
    assert torch.bincount(d.y["train"]).tolist() == [10, 10, 10, 10]


def test_cifar10_and_cifar100_python_batches(tmp_path):
    x, y = _arrays(20, 10, size=32)
    raw = x.transpose(0, 3, 1, 2).reshape(20, -1)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(c10 / name, "wb") as f:
            pickle.dump({b"data": raw, b"labels": list(y)}, f)
    d = load_data(tmp_path, val_fraction=0.0, device="cpu")
    assert d.size("train") == 20 and d.num_classes == 10
    assert torch.equal(d.x["test"][0].permute(1, 2, 0), torch.from_numpy(x[0]))
    c100 = tmp_path / "other" / "cifar-100-python"
    c100.mkdir(parents=True)
    for name in ("train", "test"):
        with open(c100 / name, "wb") as f:
            pickle.dump({b"data": raw, b"fine_labels": list(y)}, f)
    assert load_data(c100, val_fraction=0.0, device="cpu").size("test") == 20


def test_bad_paths_name_the_path(tmp_path):
    with pytest.raises(ValidationError, match="not found") as e:
        load_data(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="no dataset found"):
        load_data(tmp_path / "empty")
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValidationError, match="missing array"):
        load_data(tmp_path / "bad.npz")


def test_image_folder_without_pillow_says_so(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
    try:
        import PIL  # noqa: F401
    except ImportError:
        with pytest.raises(ValidationError, match="Pillow"):
            load_data(tmp_path)
    else:
        with pytest.raises(ValidationError, match="no images"):
            load_data(tmp_path)


def test_augment_crops_and_flips_on_tensors():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = _augment(x, 0, g)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    padded = _augment(x, 2, g)
    assert padded.shape == x.shape and padded.dtype == torch.uint8


def test_batches_normalise_and_cover_the_split():
    x, y = _arrays(50, 5)
    d = from_arrays(x, y, x, y, val_fraction=0.0, device="cpu")
    seen = sum(int(yb.numel()) for _, yb in d.batches("test", 16))
    assert seen == 50
    xb, _ = next(d.batches("test", 50))
    ref = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(d.mean).view(1, 3, 1, 1)) / \
        torch.tensor(d.std).view(1, 3, 1, 1)
    assert torch.allclose(xb, ref, atol=1e-5)
