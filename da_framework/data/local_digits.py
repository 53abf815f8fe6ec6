"""Digit datasets that tfds does not have, read from local ``.npz`` files: USPS, MNIST-M.

Layout (under the data dir: the ``data_dir`` argument, else ``$DA_DATA_DIR``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``, as for the tfds catalog)::

    <data_dir>/local_digits/usps.npz      x_train (7291, 16, 16) uint8, y_train (7291,) int,
                                          x_test (2007, 16, 16) uint8, y_test (2007,) int
    <data_dir>/local_digits/mnist_m.npz   x_train (59001, 28, 28, 3) uint8, y_train,
                                          x_test (9001, 28, 28, 3) uint8, y_test

Images are uint8 in [0, 255] (grayscale may also be stored as (N, H, W, 1)); labels are
the digits 0-9.  Producing the files (needs the original data, not fetched by us):

* USPS: the LIBSVM copies ``usps.bz2`` / ``usps.t.bz2`` (Hull, "A database for
  handwritten text recognition research", TPAMI 1994; features in [-1, 1], labels 1-10):
  ``x = ((X.toarray().reshape(-1, 16, 16) + 1) * 127.5).round().astype(np.uint8)``,
  ``y = labels - 1``, then ``np.savez_compressed(path, x_train=..., y_train=..., ...)``.
* MNIST-M (Ganin et al., JMLR 2016): MNIST digits blended with BSDS500 patches, e.g. the
  ``mnistm_data.pkl`` of the original DANN re-implementations (keys ``train``, ``test``;
  labels from MNIST train/test in the same order): save as above.

Domains (splits ``train``/``val``/``test`` = first 90% / last 10% of the file's train
arrays / its test arrays, the convention of the tfds catalog):

==============  ====================================================================
``usps``        USPS 16x16 resized (PIL bilinear) to 28x28x1 float32 in [0, 1]:
                the input shape of ``mnist`` (MNIST <-> USPS, as in ADDA)
``usps32rgb``   USPS at 32x32x3 (pairs with ``mnist32rgb``/``svhn_cropped``)
``mnistm32``    MNIST-M resized to 32x32x3 float32 in [0, 1] (pairs with ``mnist32rgb``)
==============  ====================================================================
"""

from __future__ import annotations

import os

import numpy as np

from da_framework.data.catalog import DatasetNotPreparedError, preprocess_image, resolve_data_dir
from da_framework.data.domain import ArraySource, Domain, DomainError
from da_framework.data.registry import register_domain

SUBDIR = "local_digits"
FILES = {"usps": "usps.npz", "mnist_m": "mnist_m.npz"}
_DIGITS = tuple(str(d) for d in range(10))


def local_path(dataset: str, data_dir: str | None = None) -> str:
    """Where the ``.npz`` of ``dataset`` (``"usps"`` or ``"mnist_m"``) is expected."""
    if dataset not in FILES:
        raise DomainError(f"unknown local digit dataset {dataset!r}; valid: {', '.join(FILES)}")
    return os.path.join(resolve_data_dir(data_dir), SUBDIR, FILES[dataset])


def load_arrays(dataset: str, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """The checked ``x_train, y_train, x_test, y_test`` arrays of a local ``.npz``.

    Raises:
      DatasetNotPreparedError: the file is missing (the message gives the layout).
      DomainError: the file lacks an array or has inconsistent lengths.
    """
    path = local_path(dataset, data_dir)
    if not os.path.isfile(path):
        raise DatasetNotPreparedError(
            f"{dataset} is not in the data dir: expected {path} with arrays x_train, y_train, x_test, "
            f"y_test (uint8 images, digit labels 0-9); see da_framework/data/local_digits.py for how to produce it"
        )
    with np.load(path) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise DomainError(f"{path} lacks array(s) {', '.join(missing)}")
        arrays = {k: np.asarray(f[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DomainError(f"{path}: x_{split} and y_{split} have different lengths")
    return arrays


def _preprocess(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    images = images if images.ndim == 4 else images[..., None]
    return np.stack([preprocess_image(im, size, channels) for im in images]).astype(np.float32)


def local_digit_domain(
    name: str, dataset: str, data_dir: str | None, input_shape: tuple[int, int, int], description: str
) -> Domain:
    """A 10-class digit domain from a local ``.npz`` (splits: train 90% / val 10% / test)."""
    arrays = load_arrays(dataset, data_dir)
    size, _, channels = input_shape
    x_train, x_test = _preprocess(arrays["x_train"], size, channels), _preprocess(arrays["x_test"], size, channels)
    y_train, y_test = arrays["y_train"].astype(np.int32), arrays["y_test"].astype(np.int32)
    cut = int(round(0.9 * len(x_train)))
    return Domain(
        name=name,
        splits={
            "train": ArraySource({"image": x_train[:cut], "label": y_train[:cut]}),
            "val": ArraySource({"image": x_train[cut:], "label": y_train[cut:]}),
            "test": ArraySource({"image": x_test, "label": y_test}),
        },
        num_classes=10,
        input_shape=input_shape,
        description=description,
        class_names=_DIGITS,
    )


@register_domain("usps", description="USPS (local npz) resized to 28x28x1 (pairs with mnist)", needs_download=True)
def usps(data_dir: str | None = None) -> Domain:
    """USPS digits resized 16 -> 28 px, gray, float32 (28, 28, 1) in [0, 1]."""
    return local_digit_domain("usps", "usps", data_dir, (28, 28, 1), "USPS 28x28x1 (from 16x16)")


@register_domain("usps32rgb", description="USPS (local npz) at 32x32x3 (pairs with mnist32rgb)", needs_download=True)
def usps32rgb(data_dir: str | None = None) -> Domain:
    """USPS digits resized to 32 px, gray replicated to RGB: float32 (32, 32, 3)."""
    return local_digit_domain("usps32rgb", "usps", data_dir, (32, 32, 3), "USPS 32x32x3")


@register_domain(
    "mnistm32", description="MNIST-M (local npz) resized to 32x32x3 (pairs with mnist32rgb)", needs_download=True
)
def mnistm32(data_dir: str | None = None) -> Domain:
    """MNIST-M resized 28 -> 32 px: float32 (32, 32, 3) in [0, 1]."""
    return local_digit_domain("mnistm32", "mnist_m", data_dir, (32, 32, 3), "MNIST-M 32x32x3")


