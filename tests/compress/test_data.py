import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from automc.compress.data import _augment, from_arrays, load_data, synthetic
from automc.errors import ValidationError


def _arrays(n=60, classes=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    return x, y


def test_val_from_train_splits_are_disjoint_stratified_and_deterministic(tmp_path):
    x, y = _arrays(200, 4)
    xt, yt = _arrays(40, 4, seed=1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    a = load_data(tmp_path / "d.npz", val_from="train", val_share=0.2, device="cpu")
    b = load_data(tmp_path / "d.npz", val_from="train", val_share=0.2, device="cpu")
    assert a.size("train") + a.size("val") == 200 and a.size("test") == 40
    assert torch.bincount(a.y["val"]).tolist() == [10, 10, 10, 10]
    assert torch.equal(a.x["val"], b.x["val"])
    assert a.x["train"].shape[1:] == (3, 8, 8) and a.x["train"].dtype == torch.uint8
    # train and val come from different images
    tr = {bytes(t.numpy()) for t in a.x["train"]}
    assert not any(bytes(t.numpy()) in tr for t in a.x["val"])


def test_fraction_is_a_stratified_sample():
    x, y = _arrays(400, 4)
    d = from_arrays(x, y, x[:10], y[:10], fraction=0.1, val_from="train", val_share=0.0, device="cpu")
    assert torch.bincount(d.y["train"]).tolist() == [10, 10, 10, 10]


def test_cifar10_and_cifar100_python_batches(tmp_path):
    x, y = _arrays(20, 10, size=32)
    raw = x.transpose(0, 3, 1, 2).reshape(20, -1)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(c10 / name, "wb") as f:
            pickle.dump({b"data": raw, b"labels": list(y)}, f)
    d = load_data(tmp_path, val_from="train", val_share=0.0, device="cpu")
    assert d.size("train") == 20 and d.num_classes == 10
    assert torch.equal(d.x["test"][0].permute(1, 2, 0), torch.from_numpy(x[0]))
    c100 = tmp_path / "other" / "cifar-100-python"
    c100.mkdir(parents=True)
    for name in ("train", "test"):
        with open(c100 / name, "wb") as f:
            pickle.dump({b"data": raw, b"fine_labels": list(y)}, f)
    assert load_data(c100, val_from="train", val_share=0.0, device="cpu").size("test") == 20


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
    d = from_arrays(x, y, x, y, val_from="train", val_share=0.0, device="cpu")
    seen = sum(int(yb.numel()) for _, yb in d.batches("test", 16))
    assert seen == 50
    xb, _ = next(d.batches("test", 50))
    ref = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(d.mean).view(1, 3, 1, 1)) / \
        torch.tensor(d.std).view(1, 3, 1, 1)
    assert torch.allclose(xb, ref, atol=1e-5)


# -- the three disjoint parts (issue 8: select on images the base model never saw) ----------------------------

def _keys(t):
    return [bytes(im.numpy()) for im in t]


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture
def npz(tmp_path):
    """80 training images of 4 classes and 41 unique test images (11/10/10/10 per class)."""
    x, y = _arrays(80, 4)
    xt, _ = _arrays(41, 4, seed=1)
    yt = np.array([0] * 11 + [1] * 10 + [2] * 10 + [3] * 10)
    return _save(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)


def test_default_val_is_a_stratified_seeded_half_of_the_test_part(npz):
    d = load_data(npz, device="cpu")
    with np.load(npz) as z:
        test_all = [bytes(im.transpose(2, 0, 1).copy()) for im in z["x_test"]]
    val, test = _keys(d.x["val"]), _keys(d.x["test"])
    assert not set(val) & set(test) and sorted(val + test) == sorted(test_all)  # disjoint, nothing lost
    assert torch.bincount(d.y["val"]).tolist() == [5, 5, 5, 5]  # an odd class leaves its extra image to test
    assert torch.bincount(d.y["test"]).tolist() == [6, 5, 5, 5]
    assert d.size("train") == 80
    assert d.sources == {"train": "x_train of d.npz", "val": "x_test[half 1 of 2, seed 0] of d.npz",
                         "test": "x_test[half 2 of 2, seed 0] of d.npz"}
    again, other = load_data(npz, device="cpu"), load_data(npz, seed=1, device="cpu")
    assert _keys(again.x["val"]) == val and set(_keys(other.x["val"])) != set(val)


def test_data_fraction_samples_the_training_part_only(npz):
    full, part = load_data(npz, device="cpu"), load_data(npz, fraction=0.5, device="cpu")
    assert part.size("train") == 40 and torch.bincount(part.y["train"]).tolist() == [10] * 4
    assert torch.equal(part.x["val"], full.x["val"]) and torch.equal(part.x["test"], full.x["test"])
    assert part.sources["train"] == "x_train[stratified 50%, seed 0] of d.npz"


def test_val_share_sets_the_size_of_the_validation_half(npz):
    d = load_data(npz, val_share=0.2, device="cpu")
    assert d.size("val") == 8 and d.size("test") == 33
    assert d.sources["val"] == "x_test[stratified 20%, seed 0] of d.npz"
    with pytest.raises(ValidationError, match="val_share"):
        load_data(npz, val_share=1.0, device="cpu")


def test_val_from_train_keeps_the_old_split_and_says_so(npz):
    d = load_data(npz, val_from="train", device="cpu")
    assert d.size("test") == 41 and d.size("val") == 8 and d.size("train") == 72
    assert not set(_keys(d.x["val"])) & set(_keys(d.x["train"]))
    assert d.sources == {"train": "x_train[minus val, seed 0] of d.npz",
                         "val": "x_train[stratified 10%, seed 0] of d.npz", "test": "x_test of d.npz"}


def test_explicit_validation_part_wins(npz, tmp_path):
    x, y = _arrays(80, 4)
    xt, yt = _arrays(20, 4, seed=1)
    xv, yv = _arrays(12, 4, seed=2)
    own = _save(tmp_path / "own.npz", x_train=x, y_train=y, x_test=xt, y_test=yt, x_val=xv, y_val=yv)
    d = load_data(own, device="cpu")
    assert d.size("val") == 12 and d.size("test") == 20 and d.sources["val"] == "x_val of own.npz"
    assert d.sources["test"] == "x_test of own.npz"
    # a val_data file wins over the data's own part; x_val is preferred to x_test there
    xv2, yv2 = _arrays(16, 4, seed=3)
    ext = _save(tmp_path / "ext.npz", x_val=xv2, y_val=yv2, x_test=xv, y_test=yv)
    d = load_data(own, val_data=ext, device="cpu")
    assert d.size("val") == 16 and d.sources["val"] == "x_val of ext.npz"
    only_test = _save(tmp_path / "other-test.npz", x_test=xv2, y_test=yv2)
    d = load_data(npz, val_data=only_test, device="cpu")
    assert d.size("val") == 16 and d.size("test") == 41 and d.sources["val"] == "x_test of other-test.npz"
    with pytest.raises(ValidationError, match="val_from='train' would ignore it"):
        load_data(own, val_from="train", device="cpu")


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x_val": _arrays(20, 10, seed=5)[0], "y_val": np.arange(20) % 10},
     r"y_val: label 9 is outside 0..3 \(the training data's 4 classes\)"),
    ({"x_val": _arrays(20, 2, seed=5)[0], "y_val": np.arange(20) % 2}, r"y_val: lacks class\(es\) 2, 3"),
    ({"x_val": _arrays(20, 4, size=16, seed=5)[0], "y_val": np.arange(20) % 4},
     "x_val: 16x16x3 images, but x_train of d.npz has 8x8x3"),
    ({"x_val": _arrays(20, 4, seed=5)[0], "y_val": -np.ones(20, np.int64)}, "y_val: labels must be class ids"),
    ({"x_val": _arrays(20, 4, seed=5)[0]}, "needs arrays x_val/y_val"),
])
def test_val_data_of_another_task_is_one_error_naming_file_and_array(npz, tmp_path, arrays, message):
    other = _save(tmp_path / "v.npz", **arrays)
    with pytest.raises(ValidationError, match=message) as e:
        load_data(npz, val_data=other, device="cpu")
    assert str(other) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_val_data_may_not_be_the_test_part(npz, tmp_path):
    with pytest.raises(ValidationError, match="x_test of the data file is its test part"):
        load_data(npz, val_data=npz, device="cpu")
    with np.load(npz) as z:
        copy = _save(tmp_path / "copy.npz", x_val=z["x_test"], y_val=z["y_test"])
    with pytest.raises(ValidationError, match="41 of its 41 images are test images"):
        load_data(npz, val_data=copy, device="cpu")


def _png_tree(root, splits, classes=("cat", "dog"), per_class=3, size=8, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_image_folders_val_next_to_test_is_the_validation_part(tmp_path):
    pytest.importorskip("PIL")
    root = _png_tree(tmp_path / "ds", ("train", "test", "val"))
    d = load_data(root, device="cpu")
    assert (d.size("train"), d.size("val"), d.size("test")) == (6, 6, 6)
    assert d.sources == {"train": "train/ of ds", "val": "val/ of ds", "test": "test/ of ds"}
    # without test/, val/ is the held-out part (ImageNet layout) and validation is half of it
    (root / "test").rename(tmp_path / "moved")
    d = load_data(root, device="cpu")
    assert (d.size("val"), d.size("test")) == (2, 4) and d.sources["test"] == "val/[half 2 of 2, seed 0] of ds"
    # a class folder the training part lacks
    (root / "val" / "horse").mkdir()
    with pytest.raises(ValidationError, match="class folder.*horse are not training classes"):
        load_data(root, device="cpu")


def test_val_data_folder_must_hold_the_training_classes(tmp_path):
    pytest.importorskip("PIL")
    root = _png_tree(tmp_path / "ds", ("train", "test"))
    good = _png_tree(tmp_path / "v", ("val",), seed=1)
    assert load_data(root, val_data=good, device="cpu").sources["val"] == "val/ of v"
    bad = _png_tree(tmp_path / "w", ("val",), classes=("cat", "dog", "eel"), seed=2)
    with pytest.raises(ValidationError, match="eel are not training classes"):
        load_data(root, val_data=bad, device="cpu")


def test_synthetic_keeps_a_validation_part_apart_from_training():
    d = synthetic(num_classes=4, per_class=20, test_per_class=5)
    assert d.size("val") == 12 and d.size("train") == 68 and d.size("test") == 20
    assert not set(_keys(d.x["val"])) & set(_keys(d.x["train"]))
    assert synthetic(num_classes=4, per_class=20, val_fraction=0.0).size("val") == 0


# -- validation of what is read (issue 7) ---------------------------------------------------------------------

def _good():
    x, y = _arrays(40, 4)
    xt, yt = _arrays(16, 4, seed=1)
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}


@pytest.mark.parametrize(("change", "message"), [
    ({"x_train": np.zeros((40, 8, 8), np.uint8)}, "x_train: images must be a 4-D array"),
    ({"x_train": np.zeros((40, 3, 8, 8), np.uint8)}, "x_train: expected .* channels-first"),
    ({"x_test": np.zeros((16, 8, 8, 1), np.uint8)}, "x_test: 8x8x1 images, but x_train of d.npz has 8x8x3"),
    ({"x_test": np.zeros((0, 8, 8, 3), np.uint8), "y_test": np.zeros(0, np.int64)}, "x_test: no images"),
    ({"x_train": np.full((40, 8, 8, 3), np.nan)}, "x_train: images contain NaN"),
    ({"x_train": np.full((40, 8, 8, 3), 300.0)}, r"x_train: pixel values must lie in 0..255 .* 300..300"),
    ({"x_train": np.full((40, 8, 8, 3), -0.5)}, "x_train: pixel values must lie in 0..255"),
    ({"x_train": np.full((40, 8, 8, 3), "a")}, "x_train: images must be uint8"),
    ({"y_train": -(np.arange(40) % 4)}, "y_train: labels must be class ids 0..C-1, found -3"),
    ({"y_train": (np.arange(40) % 4) + 0.5}, "y_train: labels must be whole numbers"),
    ({"y_train": np.arange(40) % 4 == 0}, "y_train: labels must be integer class ids, got dtype bool"),
    ({"y_train": np.zeros((40, 2), np.int64)}, "y_train: labels must be a 1-D array"),
    ({"y_train": np.zeros(40, np.int64)}, "y_train: needs at least 2 classes, found 1"),
    ({"y_train": np.arange(39) % 4}, "x_train: 40 images but 39 labels in y_train"),
    ({"y_test": np.full(16, 7)}, r"y_test: label 7 is outside 0..3 \(the training data's 4 classes\)"),
    ({"y_test": np.full(16, 1), "y_train": np.arange(40) % 2 * 2},
     r"y_train: labels must be 0..C-1; class\(es\) 1 have no images \(labels found: 0, 2; number the 2 classes"),
    ({"y_train": 10 + np.arange(40) % 4, "y_test": 10 + np.arange(16) % 4},
     r"y_train: labels must be 0..C-1; class\(es\) 0..9 have no images \(labels found: 10..13; number the 4 "
     r"classes 0..3\)"),
])
def test_bad_arrays_are_one_error_naming_file_array_and_problem(tmp_path, change, message):
    arrays = {**_good(), **change}
    path = _save(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValidationError, match=message) as e:
        load_data(path, device="cpu")
    assert str(e.value).startswith(f"{path}: ") and len(str(e.value).splitlines()) == 1


def test_classes_without_training_images_are_refused_unless_num_classes_is_stated(tmp_path):
    x, y = _arrays(40, 4)
    # from_arrays with a stated class count may leave classes empty (a model trained on a subset of them)
    d = from_arrays(x, y + 10, x[:8], y[:8] + 10, num_classes=20, device="cpu")
    assert d.num_classes == 20
    with pytest.raises(ValidationError, match=r"y_test: label\(s\) 9 never occur in y_train"):
        from_arrays(x, y + 10, x[:8], np.full(8, 9), num_classes=20, device="cpu")
    with pytest.raises(ValidationError, match=r"y_train: labels must be 0..C-1; class\(es\) 0..9 have no images"):
        from_arrays(x, y + 10, x[:8], y[:8] + 10, device="cpu")
    # carving validation out of the training part may not empty a class there
    y1 = np.where(np.arange(40) == 3, 3, np.arange(40) % 3)  # class 3 has one image
    with pytest.raises(ValidationError, match=r"y_train: class\(es\) 3 have too few images to carve out a "
                                              r"validation share of 10%: none would be left for training"):
        from_arrays(x, y1, x[:8], y1[:8], val_from="train", device="cpu")


def test_empty_class_folder_is_named(tmp_path):
    pytest.importorskip("PIL")
    root = _png_tree(tmp_path / "ds", ("train", "test"), classes=("cat", "dog", "eel"))
    for split in ("train", "test"):
        for f in (root / split / "eel").iterdir():
            f.unlink()
    with pytest.raises(ValidationError, match=r"train/ labels: class folder\(s\) eel have no images"):
        load_data(root, device="cpu")


def test_float_images_in_0_1_are_scaled_and_int_labels_as_floats_accepted():
    x, y = _arrays(40, 4)
    d = from_arrays(x / 255.0, y.astype(np.float32), x[:8] / 255.0, y[:8], device="cpu")
    assert torch.equal(d.x["train"][0], torch.from_numpy(x[0]).permute(2, 0, 1))


@pytest.mark.parametrize("content", [b"not a zip", b"PK\x03\x04garbage", b""])
def test_garbage_npz_is_one_error(tmp_path, content):
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(ValidationError, match="cannot read data|not an .npz") as e:
        load_data(tmp_path / "d.npz")
    assert str(tmp_path / "d.npz") in str(e.value)


# -- CIFAR batches never run code ----------------------------------------------------------------------------

class _Payload:
    """A pickle that writes a marker file when unpickled with plain pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_cifar_batch_with_a_code_payload_is_refused_without_running_it(tmp_path):
    x, y = _arrays(10, 10, size=32)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    marker = tmp_path / "marker"
    evil = pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(10, -1), b"labels": _Payload(str(marker))})
    pickle.loads(evil)  # the payload is real: plain pickle runs it
    assert marker.read_text() == "pwned"
    marker.unlink()
    (d / "data_batch_1").write_bytes(evil)
    (d / "test_batch").write_bytes(evil)
    with pytest.raises(ValidationError, match="refusing to unpickle pathlib.Path.write_text") as e:
        load_data(tmp_path)
    assert not marker.exists()
    assert str(d / "data_batch_1") in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path, protocol):
    x, y = _arrays(20, 10, size=32)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(20, -1), b"labels": [int(v) for v in y],
                         b"batch_label": "training batch 1 of 5"}, f, protocol=protocol)
    data = load_data(tmp_path, device="cpu")
    assert data.size("train") == 20 and data.sources["train"] == "data_batch_1 of cifar-10-batches-py"


# -- data against the model ----------------------------------------------------------------------------------

def test_model_fit_checks_channels_classes_and_image_size(tmp_path):
    from automc.compress.models import build_model, check_fits, load_weights

    net = build_model("resnet8", 4, width=4)
    check_fits(net, (3, 16, 16), 4)
    with pytest.raises(ValidationError, match="x_train of d.npz has 1-channel images but CifarResNet expects 3"):
        check_fits(net, (1, 16, 16), 4, data="x_train of d.npz")
    with pytest.raises(ValidationError, match="has 10 classes but CifarResNet has 4 outputs"):
        check_fits(net, (3, 16, 16), 10)
    vgg = build_model("vgg11", 4, width=8)
    with pytest.raises(ValidationError, match="CifarVGG cannot take the 8x8 images"):
        check_fits(vgg, (3, 8, 8), 4)
    torch.save(build_model("resnet8", 10, width=4).state_dict(), tmp_path / "w10.pt")
    with pytest.raises(ValidationError, match=r"classifier \(linear\) has 10 classes but the data has 4"):
        load_weights(net, tmp_path / "w10.pt")


def test_model_for_data_builds_checks_and_loads(tmp_path):
    from automc.compress.models import build_model, model_for_data

    data = synthetic(num_classes=4, per_class=6, test_per_class=2, size=8)
    torch.save(build_model("resnet8", 4, width=4).state_dict(), tmp_path / "w.pt")
    net = model_for_data("resnet8", data, tmp_path / "w.pt", width=4)
    assert net.linear.out_features == 4
    with pytest.raises(ValidationError, match="CifarVGG cannot take the 8x8 images of x_train.* of synthetic"):
        model_for_data("vgg11", data, width=8)
