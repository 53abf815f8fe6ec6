"""USPS / MNIST-M from the documented local .npz layout (generated files), and the digit experiments."""

import numpy as np
import pytest

from da_framework.experiment_files import load_experiment
from da_framework.data import domain_names, get_domain
from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import DomainError
from da_framework.data.local import local_path


def write(tmp_path, name, x_train, x_test):
    path = tmp_path / name / f"{name}.npz"
    path.parent.mkdir(exist_ok=True)
    y_train = np.arange(len(x_train)) % 10
    y_test = np.arange(len(x_test)) % 10
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return y_train, y_test


def test_usps_from_npz(tmp_path):
    x = np.zeros((20, 16, 16), np.uint8)
    x[:, 4:12, 4:12] = 255  # a white square
    y_train, y_test = write(tmp_path, "usps", x, x[:5])
    d = get_domain("usps", data_dir=str(tmp_path))
    assert d.input_shape == (28, 28, 1) and d.num_classes == 10
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [18, 2, 5]
    r = d.splits["train"][3]
    assert r["image"].shape == (28, 28, 1) and r["image"].dtype == np.float32
    assert r["image"].max() == pytest.approx(1.0) and r["image"][0, 0, 0] == 0.0
    assert r["image"][14, 14, 0] == pytest.approx(1.0)  # square centre stays white
    np.testing.assert_array_equal(d.splits["val"].arrays["label"], y_train[18:])
    np.testing.assert_array_equal(d.splits["test"].arrays["label"], y_test)
    rgb = get_domain("usps32rgb", data_dir=str(tmp_path))
    im = rgb.splits["test"][0]["image"]
    assert im.shape == (32, 32, 3) and np.array_equal(im[..., 0], im[..., 2])


def test_mnistm_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 28, 28, 3), dtype=np.uint8)
    write(tmp_path, "mnist_m", x, x[:4])
    d = get_domain("mnistm32", data_dir=str(tmp_path))
    assert d.input_shape == (32, 32, 3)
    im = d.splits["train"][0]["image"]
    assert im.shape == (32, 32, 3) and 0.0 <= im.min() and im.max() <= 1.0
    # bilinear resizing keeps the mean colour close
    np.testing.assert_allclose(im.mean((0, 1)), x[0].mean((0, 1)) / 255, atol=0.03)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="usps/usps.npz"):
        get_domain("usps", data_dir=str(tmp_path))
    (tmp_path / "mnist_m").mkdir()
    np.savez(tmp_path / "mnist_m" / "mnist_m.npz", x_train=np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(DomainError, match="lacks array"):
        get_domain("mnistm32", data_dir=str(tmp_path))
    with pytest.raises(DomainError, match="bad local dataset name"):
        local_path("../svhn")


@pytest.mark.parametrize(
    "name,source,target",
    [
        ("mnist_to_usps", "mnist", "usps"),
        ("usps_to_mnist", "usps", "mnist"),
        ("svhn_to_mnist", "svhn_cropped", "mnist32rgb"),
        ("mnist_to_mnistm", "mnist32rgb", "mnistm32"),
    ],
)
def test_digit_experiments_are_registered(name, source, target):
    config = load_experiment(name)
    assert (config.source, config.target) == (source, target)
    assert source in domain_names() and target in domain_names()


def test_detection_and_local_domains_listed():
    names = domain_names()
    assert {"usps", "usps32rgb", "mnistm32", "synthetic_det/bird", "synthetic_det/pedestrian"} <= set(names)
