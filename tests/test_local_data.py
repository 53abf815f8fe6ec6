"""The local-dataset layout <data_dir>/<dataset>/<dataset>.npz: generated files, and the real copies when present."""

from pathlib import Path

import numpy as np
import pytest

from da_framework.data import get_domain
from da_framework.data import local as local_data
from da_framework.data.catalog import DatasetNotPreparedError, preprocess_image
from da_framework.data.domain import DomainError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "mnist" / "mnist.npz").is_file(), reason="no ../shared/data here")


def write(root, dataset, x_train, x_test, y_train=None, y_test=None):
    path = root / dataset / f"{dataset}.npz"
    path.parent.mkdir(exist_ok=True)
    y_train = np.arange(len(x_train)) % 10 if y_train is None else y_train
    y_test = np.arange(len(x_test)) % 10 if y_test is None else y_test
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def tiny_mnist(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    x[3, 5, 7], x[3, 0, 0], x[19, 27, 27] = 51, 255, 102
    x_test = np.full((5, 28, 28), 204, np.uint8)
    write(tmp_path, "mnist", x, x_test)
    return x, x_test


def test_mnist_from_npz_exact_pixels_and_splits(tmp_path):
    x, _ = tiny_mnist(tmp_path)
    d = get_domain("mnist", str(tmp_path))
    assert d.input_shape == (28, 28, 1) and d.num_classes == 10
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [18, 2, 5]
    train, val, test = (d.splits[s].arrays for s in ("train", "val", "test"))
    assert train["image"].shape == (18, 28, 28, 1) and train["image"].dtype == np.float32
    assert train["image"][3, 5, 7, 0] == np.float32(0.2) and train["image"][3, 0, 0, 0] == 1.0
    assert val["image"][1, 27, 27, 0] == np.float32(0.4)  # x[19]: the last 10% is the val split
    assert np.all(test["image"] == np.float32(0.8))
    np.testing.assert_array_equal(train["image"][..., 0], x[:18].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(val["label"], [8, 9])
    assert train["label"].dtype == np.int32


def test_mnist32rgb_and_usps_resize_through_pil(tmp_path):
    tiny_mnist(tmp_path)
    rgb = get_domain("mnist32rgb", str(tmp_path)).splits["test"].arrays["image"]
    assert rgb.shape == (5, 32, 32, 3) and np.all(rgb == np.float32(0.8))  # a constant image stays constant
    xu = np.zeros((10, 16, 16), np.uint8)
    xu[:, 4:12, 4:12] = 255
    write(tmp_path, "usps", xu, np.full((3, 16, 16), 51, np.uint8))
    u = get_domain("usps", str(tmp_path))
    assert [len(u.splits[s]) for s in ("train", "val", "test")] == [9, 1, 3]
    im = u.splits["train"].arrays["image"][0]
    assert im.shape == (28, 28, 1) and im[0, 0, 0] == 0.0 and im[14, 14, 0] == 1.0
    np.testing.assert_array_equal(im, preprocess_image(xu[0][..., None], 28, 1))
    assert np.all(u.splits["test"].arrays["image"] == np.float32(0.2))


def test_same_size_is_vectorised_and_equals_per_image_path(monkeypatch):
    x = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    per_image = np.stack([preprocess_image(im[..., None], 28, 3) for im in x])
    monkeypatch.setattr(local_data, "preprocess_image", lambda *a: pytest.fail("PIL path used without a resize"))
    fast = local_data.images_to_float(x, 28, 3)
    np.testing.assert_array_equal(fast, per_image)
    assert fast.shape == (6, 28, 28, 3)


def test_domain_is_cached_until_the_file_changes(tmp_path):
    tiny_mnist(tmp_path)
    a = get_domain("mnist", str(tmp_path))
    assert get_domain("mnist", str(tmp_path)) is a
    assert not a.splits["train"].arrays["image"].flags.writeable
    write(tmp_path, "mnist", np.zeros((30, 28, 28), np.uint8), np.zeros((4, 28, 28), np.uint8))
    b = get_domain("mnist", str(tmp_path))
    assert b is not a and len(b.splits["test"]) == 4


def test_missing_file_names_path_layout_and_tfds_command(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as e:
        get_domain("mnist", str(tmp_path / "empty"))
    msg = str(e.value)
    assert str(tmp_path / "empty" / "mnist" / "mnist.npz") in msg and "<data_dir>/<dataset>/<dataset>.npz" in msg
    assert "tfds build mnist" in msg and "\n" not in msg
    with pytest.raises(DatasetNotPreparedError, match=r"usps/usps\.npz .*layout <data_dir>/<dataset>/<dataset>\.npz"):
        get_domain("usps", str(tmp_path))


def test_malformed_files_name_the_file(tmp_path):
    path = write(tmp_path, "usps", np.zeros((4, 16, 16), np.uint8), np.zeros((2, 16, 16), np.uint8), y_test=np.zeros(3))
    with pytest.raises(DomainError, match=f"{path}: x_test has 2 images but y_test has 3 labels"):
        get_domain("usps", str(tmp_path))
    np.savez(path, x_train=np.zeros((4, 16, 16), np.uint8))
    with pytest.raises(DomainError, match=f"{path} lacks array"):
        get_domain("usps", str(tmp_path))


def test_data_dir_from_environment(tmp_path, monkeypatch):
    tiny_mnist(tmp_path)
    monkeypatch.setenv("DA_DATA_DIR", str(tmp_path))
    assert len(get_domain("mnist").splits["test"]) == 5


@needs_shared
def test_real_mnist_and_usps():
    d = get_domain("mnist", str(SHARED))
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [54000, 6000, 10000]
    counts = np.bincount(d.splits["test"].arrays["label"], minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # mnist/README.md
    with np.load(SHARED / "mnist" / "mnist.npz") as f:
        raw0, raw_last = f["x_test"][0], f["x_train"][-1]
    np.testing.assert_array_equal(d.splits["test"].arrays["image"][0, ..., 0], raw0 / np.float32(255))
    np.testing.assert_array_equal(d.splits["val"].arrays["image"][-1, ..., 0], raw_last / np.float32(255))
    u = get_domain("usps", str(SHARED))
    assert [len(u.splits[s]) for s in ("train", "val", "test")] == [6562, 729, 2007]
    train_counts = np.bincount(np.concatenate([u.splits["train"].arrays["label"], u.splits["val"].arrays["label"]]))
    assert train_counts.tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]  # usps/README.md
    assert np.bincount(u.splits["test"].arrays["label"]).tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
    assert u.input_shape == d.input_shape == (28, 28, 1)
