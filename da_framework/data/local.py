"""Datasets read from local ``.npz`` files: one layout for every dataset.

Layout (the data dir is the ``data_dir`` argument / config key, else ``$DA_DATA_DIR``,
else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``; see
:func:`~da_framework.data.catalog.resolve_data_dir`)::

    <data_dir>/<dataset>/<dataset>.npz

with arrays ``x_train, y_train, x_test, y_test`` (uint8 images ``(N, H, W)`` or
``(N, H, W, C)`` in [0, 255], integer labels).  This is the layout of the project's
shared data folder, so ``DA_DATA_DIR=../shared/data`` works as is.  Files read here:

===========  =================================================================
``mnist``    ``mnist/mnist.npz``: x_train (60000, 28, 28), x_test (10000, 28, 28)
             (read by the ``mnist``/``mnist32rgb`` domains of the catalog when
             present, before trying tfds)
``usps``     ``usps/usps.npz``: x_train (7291, 16, 16), x_test (2007, 16, 16)
``mnist_m``  ``mnist_m/mnist_m.npz``: x_train (59001, 28, 28, 3), x_test (9001, 28, 28, 3)
===========  =================================================================

Same path layout, read by their own modules: ``cifar10_4class/cifar10_4class.npz``
(:mod:`da_framework.data.local_cifar`) and ``imdb/imdb.npz`` (raw text,
:mod:`da_framework.data.local_imdb`), both with per-class train/val splits.

Producing a file from the original data (not fetched by us): USPS from the LIBSVM copies
``usps.bz2``/``usps.t.bz2`` (Hull, TPAMI 1994; features in [-1, 1], labels 1-10) with
``x = ((X.toarray().reshape(-1, 16, 16) + 1) * 127.5).round().astype(np.uint8)``,
``y = labels - 1``; MNIST-M (Ganin et al., JMLR 2016) from the ``mnistm_data.pkl`` of the
DANN re-implementations; then ``np.savez_compressed(path, x_train=..., y_train=...,
x_test=..., y_test=...)``.

Splits (the convention of the tfds catalog): ``train`` = the first 90% of the file's train
arrays (``round(0.9 n)``), ``val`` = the last 10%, ``test`` = the test arrays.

Image files (not ``.npz``) use the same data dir and the same ``<data_dir>/<dataset>/`` folder:
``<data_dir>/<folder>/<class>/<image>`` is the domain ``imagefolder/<folder>``
(:mod:`da_framework.data.image_folder`), and Office-31, Office-Home, VisDA-2017 and DomainNet are
read from ``<data_dir>/office31/``, ``office_home/``, ``visda2017/`` and ``domainnet/`` in the layouts
they are distributed in (:mod:`da_framework.data.image_datasets`; docs/image_datasets.md).  Those
are decoded lazily, image by image, in grain's pipeline; nothing below applies to them.

Images become float32 in [0, 1] (``value / 255``).  When the stored size already matches
the domain's it is a vectorised reshape/cast (gray replicated to RGB where asked); only a
resize (USPS 16 -> 28, anything -> 32) goes image by image through PIL's bilinear filter
(:func:`~da_framework.data.catalog.preprocess_image`, as for tfds data).  A loaded domain is
cached per (name, file, file modification time, size) and its arrays are read-only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from da_framework.data.catalog import DatasetNotPreparedError, preprocess_image, resolve_data_dir
from da_framework.data.domain import ArraySource, Domain, DomainError
from da_framework.data.registry import register_domain

LAYOUT = "<data_dir>/<dataset>/<dataset>.npz with arrays x_train, y_train, x_test, y_test"
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_DIGITS = tuple(str(d) for d in range(10))
_CACHE: dict[tuple[str, str, int, int], Domain] = {}


def local_path(dataset: str, data_dir: str | None = None) -> str:
    """Where the ``.npz`` of ``dataset`` is expected: ``<data_dir>/<dataset>/<dataset>.npz``."""
    if not dataset or os.sep in dataset or dataset.startswith("."):
        raise DomainError(f"bad local dataset name {dataset!r}; use a plain folder name such as 'usps'")
    return os.path.join(resolve_data_dir(data_dir), dataset, f"{dataset}.npz")


def has_local(dataset: str, data_dir: str | None = None) -> bool:
    """Whether the ``.npz`` of ``dataset`` exists in the data dir."""
    return os.path.isfile(local_path(dataset, data_dir))


def load_arrays(dataset: str, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """The checked ``x_train, y_train, x_test, y_test`` arrays of a local ``.npz``.

    Raises:
      DatasetNotPreparedError: the file is missing (one line naming the path and layout).
      DomainError: the file lacks an array or an x/y pair has different lengths.
    """
    path = local_path(dataset, data_dir)
    if not os.path.isfile(path):
        raise DatasetNotPreparedError(
            f"{dataset} is not in the data dir: expected {path} (layout {LAYOUT}; the data dir is the "
            f"data_dir config key, else $DA_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
        )
    with np.load(path) as f:
        missing = [k for k in ARRAYS if k not in f]
        if missing:
            raise DomainError(f"{path} lacks array(s) {', '.join(missing)} (layout {LAYOUT})")
        arrays = {k: np.asarray(f[k]) for k in ARRAYS}
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise DomainError(f"{path}: x_{split} has {nx} images but y_{split} has {ny} labels")
    return arrays


def images_to_float(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, size, size, channels)`` in [0, 1].

    Vectorised (``x / 255``, gray repeated to RGB) when ``H = W = size`` and no RGB -> gray
    conversion is needed; otherwise image by image with
    :func:`~da_framework.data.catalog.preprocess_image` (PIL bilinear resize, ITU-R 601 luma).
    """
    images = np.asarray(images, dtype=np.uint8)
    images = images if images.ndim == 4 else images[..., None]
    if images.shape[1:3] == (size, size) and not (channels == 1 and images.shape[-1] == 3):
        out = images.astype(np.float32) / np.float32(255.0)
        return np.repeat(out, 3, axis=-1) if channels == 3 and out.shape[-1] == 1 else out
    return np.stack([preprocess_image(im, size, channels) for im in images]).astype(np.float32)


def read_only(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous array that refuses writes (the same array when it is one already)."""
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def local_image_domain(
    name: str,
    dataset: str,
    data_dir: str | None,
    input_shape: tuple[int, int, int],
    description: str,
    class_names: Sequence[str] = _DIGITS,
) -> Domain:
    """An image domain from ``<data_dir>/<dataset>/<dataset>.npz`` (train 90% / val 10% / test).

    Args:
      name: registry name of the domain.
      dataset: folder and file stem in the layout, e.g. ``"usps"``.
      data_dir: see :func:`~da_framework.data.catalog.resolve_data_dir`.
      input_shape: ``(size, size, channels)`` of the preprocessed images.
      description: shown by ``da list``.
      class_names: names of the labels ``0..len - 1``.

    Raises:
      DatasetNotPreparedError: the file is missing.
      DomainError: the file is malformed.
    """
    path = local_path(dataset, data_dir)
    stat = os.stat(path) if os.path.isfile(path) else None
    key = (name, os.path.realpath(path), stat.st_mtime_ns, stat.st_size) if stat else None
    if key in _CACHE:
        return _CACHE[key]
    arrays = load_arrays(dataset, data_dir)
    size, _, channels = input_shape
    x_train, x_test = (images_to_float(arrays[k], size, channels) for k in ("x_train", "x_test"))
    y_train, y_test = arrays["y_train"].astype(np.int32), arrays["y_test"].astype(np.int32)
    cut = round(0.9 * len(x_train))
    parts = {"train": (x_train[:cut], y_train[:cut]), "val": (x_train[cut:], y_train[cut:]), "test": (x_test, y_test)}
    domain = Domain(
        name=name,
        splits={
            s: ArraySource({"image": read_only(x.copy()), "label": read_only(y.copy())})
            for s, (x, y) in parts.items()
        },
        num_classes=len(class_names),
        input_shape=input_shape,
        description=description,
        class_names=tuple(class_names),
    )
    if key is not None:
        _CACHE[key] = domain
    return domain


@register_domain("usps", description="USPS (local npz) resized to 28x28x1 (pairs with mnist)", needs_download=True)
def usps(data_dir: str | None = None) -> Domain:
    """USPS digits resized 16 -> 28 px (PIL bilinear), gray, float32 (28, 28, 1) in [0, 1]."""
    return local_image_domain("usps", "usps", data_dir, (28, 28, 1), "USPS 28x28x1 (from 16x16)")


@register_domain("usps32rgb", description="USPS (local npz) at 32x32x3 (pairs with mnist32rgb)", needs_download=True)
def usps32rgb(data_dir: str | None = None) -> Domain:
    """USPS digits resized to 32 px, gray replicated to RGB: float32 (32, 32, 3)."""
    return local_image_domain("usps32rgb", "usps", data_dir, (32, 32, 3), "USPS 32x32x3")


@register_domain(
    "mnistm32", description="MNIST-M (local npz) resized to 32x32x3 (pairs with mnist32rgb)", needs_download=True
)
def mnistm32(data_dir: str | None = None) -> Domain:
    """MNIST-M resized 28 -> 32 px: float32 (32, 32, 3) in [0, 1]."""
    return local_image_domain("mnistm32", "mnist_m", data_dir, (32, 32, 3), "MNIST-M 32x32x3")
