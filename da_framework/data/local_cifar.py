"""CIFAR-10 airplane/bird/cat/dog from the local layout: the domain ``cifar10_4class``.

File: ``<data_dir>/cifar10_4class/cifar10_4class.npz`` (the layout of
:mod:`da_framework.data.local`): ``x_train`` (8000, 32, 32, 3) and ``x_test`` (4000, 32, 32, 3)
uint8 RGB, ``y_train``/``y_test`` in 0..3 = airplane, bird, cat, dog (CIFAR-10 labels 0, 2, 3,
5), optional ``class_names``.  The shared copy holds the official test images of these classes
(1,000 each) and 2,000 train images per class drawn from the 5,000 (its README.md).

**Caveat** (:data:`PIXEL_CAVEAT`): that copy was rebuilt from JPEG files (libjpeg quality 75),
so its pixels differ from lossless CIFAR-10 by JPEG error; the images and split are the
official ones.  Every result made from it must carry :data:`PIXEL_CAVEAT`, and these pixels
must not be mixed with lossless CIFAR-10 in one experiment.

Splits: the file is stored class by class, so ``val`` is cut per class
(:func:`~da_framework.data.local_splits.stratified_split`: the last 10% of each class's train
images, 200 per class; ``train`` 1,800 per class), ``test`` = the file's test arrays.  Pixels
become float32 ``value / 255`` (:func:`~da_framework.data.local.images_to_float`, no resize).
"""

from __future__ import annotations

import os

import numpy as np

from da_framework.data.domain import ArraySource, Domain, DomainError
from da_framework.data.local import images_to_float, load_arrays, local_path, read_only
from da_framework.data.local_splits import stratified_split
from da_framework.data.registry import register_domain

DATASET = "cifar10_4class"
CLASS_NAMES = ("airplane", "bird", "cat", "dog")
CIFAR10_LABELS = (0, 2, 3, 5)  # CIFAR-10 label id of each class above
PIXEL_CAVEAT = (
    "pixels are JPEG-compressed (libjpeg q75) copies of CIFAR-10, not bit-exact "
    "(see <data_dir>/cifar10_4class/README.md)"
)
_CACHE: dict[tuple[str, int, int], Domain] = {}


def _class_names(path: str) -> tuple[str, ...]:
    with np.load(path) as f:
        if "class_names" not in f:
            return CLASS_NAMES
        names = tuple(str(n) for n in f["class_names"])
    if names != CLASS_NAMES:
        raise DomainError(f"{path}: class_names {names} differ from the expected {CLASS_NAMES}")
    return names


def cifar10_4class_domain(data_dir: str | None = None) -> Domain:
    """The 4-class CIFAR-10 subset, float32 (32, 32, 3) in [0, 1]; splits train/val/test.

    Raises:
      DatasetNotPreparedError: the file is missing (one line with the expected path).
      DomainError: the file lacks an array, has labels outside 0..3, images that are not
        (N, 32, 32, 3), or other class names.
    """
    path = local_path(DATASET, data_dir)
    stat = os.stat(path) if os.path.isfile(path) else None
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size) if stat else None
    if key in _CACHE:
        return _CACHE[key]
    arrays = load_arrays(DATASET, data_dir)
    names = _class_names(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DomainError(f"{path}: x_{split} has shape {x.shape}, expected (N, 32, 32, 3)")
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise DomainError(f"{path}: y_{split} has labels outside 0..{len(names) - 1}")
    x_train = images_to_float(arrays["x_train"], 32, 3)
    y_train = arrays["y_train"].astype(np.int32)
    tr, va = stratified_split(y_train)
    parts = {
        "train": (x_train[tr], y_train[tr]),
        "val": (x_train[va], y_train[va]),
        "test": (images_to_float(arrays["x_test"], 32, 3), arrays["y_test"].astype(np.int32)),
    }
    domain = Domain(
        name=DATASET,
        splits={s: ArraySource({"image": read_only(x), "label": read_only(y)}) for s, (x, y) in parts.items()},
        num_classes=len(names),
        input_shape=(32, 32, 3),
        description="CIFAR-10 airplane/bird/cat/dog 32x32x3 (local npz; JPEG q75 pixels, not bit-exact)",
        class_names=names,
    )
    if key is not None:
        _CACHE[key] = domain
    return domain


@register_domain(
    DATASET,
    description="CIFAR-10 airplane/bird/cat/dog (local npz; JPEG-compressed pixels, see its README)",
    needs_download=True,
)
def cifar10_4class(data_dir: str | None = None) -> Domain:
    """CIFAR-10 airplane/bird/cat/dog from ``<data_dir>/cifar10_4class/cifar10_4class.npz``."""
    return cifar10_4class_domain(data_dir)
