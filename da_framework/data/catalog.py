"""Domains read from prepared tensorflow-datasets (tfds) catalog datasets.

Every split is read lazily with ``tfds.data_source(name, split=..., data_dir=...,
download=False)`` (random access over ``array_record`` files; TensorFlow is not needed)
and wrapped in a :class:`~da_framework.data.domain.MappedSource` whose per-record
function (NumPy/PIL only) does the preprocessing below.  Nothing is ever downloaded: a
dataset that is not prepared raises :class:`DatasetNotPreparedError`, whose message
gives the ``tfds build`` command that prepares it.

``data_dir=None`` means ``$DA_DATA_DIR``, else ``$TFDS_DATA_DIR``, else tfds's default
``~/tensorflow_datasets`` (see :func:`resolve_data_dir`).

Splits: ``train``/``val``/``test`` are tfds ``train[:90%]``/``train[90%:]``/``test``
(MNIST, SVHN, CIFAR-10 and IMDB have no validation split; for MNIST 54,000/6,000/10,000,
the sizes of the local-file path, though tfds's 90% is of its own, hash-shuffled, storage
order, so the two paths' train/val members differ), and
``train``/``validation``/``test`` for VOC.  Labels are int32 everywhere.

==================  ======================================================================
``mnist``           28x28x1 uint8 digits -> float32 in [0, 1], shape (28, 28, 1); read from
                    ``<data_dir>/mnist/mnist.npz`` when that exists (the local layout of
                    :mod:`da_framework.data.local`), else from tfds
``mnist32rgb``      MNIST resized to 32x32 (bilinear), gray replicated to 3 channels: the
                    input shape of ``svhn_cropped`` for MNIST <-> SVHN pairs (same sources)
``svhn_cropped``    32x32x3 street-view digits -> float32 in [0, 1]
``svhn_gray28``     SVHN to grayscale (ITU-R 601 luma), resized to 28x28x1 (bilinear): the
                    input shape of ``mnist`` for SVHN <-> MNIST pairs
``cifar10``         32x32x3 -> float32 in [0, 1]; class names from the tfds feature spec
``imdb_reviews``    text -> ``"text"``: int32 token ids of fixed length 256 (see
                    :mod:`da_framework.data.text`; the
                    vocabulary, 20,000 ids, is built once per domain, on first use, from
                    the domain's ``train`` split)
==================  ======================================================================

The tokenizer is in :mod:`da_framework.data.text`; the VOC 2007 domains (same tfds reading)
in :mod:`da_framework.data.voc2007`.

Resizing uses PIL's bilinear filter on the uint8 image (antialiased when shrinking),
PIL being what tfds itself decodes images with when TensorFlow and OpenCV are absent.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from da_framework.data.domain import Domain, DomainError, MappedSource, RandomAccessSource, Record
from da_framework.data.registry import register_domain
from da_framework.data.text import TextEncoder

SPLITS_FROM_TRAIN = {"train": "train[:90%]", "val": "train[90%:]", "test": "test"}
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMDB_VOCAB_SIZE, IMDB_LENGTH = 20_000, 256
_DIGIT_NAMES = tuple(str(d) for d in range(10))


class DatasetNotPreparedError(DomainError):
    """Raised when a tfds dataset is not prepared (as ``array_record``) in the data dir."""


# --------------------------------------------------------------------------- reading


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Returns ``data_dir``, else ``$DA_DATA_DIR``, else tfds's default data dir.

    tfds's default is ``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets``.
    """
    if data_dir:
        return os.path.expanduser(os.fspath(data_dir))
    if os.environ.get("DA_DATA_DIR"):
        return os.path.expanduser(os.environ["DA_DATA_DIR"])
    default = os.path.join("~", "tensorflow_datasets")
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or default)


def open_tfds_splits(
    name: str,
    splits: Mapping[str, str],
    data_dir: str | None = None,
    decoders: Mapping[str, Any] | None = None,
) -> dict[str, RandomAccessSource]:
    """Opens prepared tfds splits with ``tfds.data_source`` (never downloads).

    Args:
      name: tfds name, e.g. ``"mnist"`` or ``"voc/2007"``.
      splits: our split name -> tfds split spec, e.g. ``{"val": "train[90%:]"}``.
      data_dir: where the prepared dataset lives (see :func:`resolve_data_dir`).
      decoders: optional tfds decoders, e.g. ``{"image": tfds.decode.SkipDecoding()}``.

    Raises:
      DatasetNotPreparedError: the dataset is not prepared in ``array_record`` format
        under the data dir.
    """
    import tensorflow_datasets as tfds  # imported lazily: `da list` must stay fast

    directory = resolve_data_dir(data_dir)
    try:
        return dict(tfds.data_source(name, split=dict(splits), data_dir=directory, download=False, decoders=decoders))
    # tfds raises NotImplementedError ("Random access data source for file format
    # FileFormat.TFRECORD is not supported") when nothing is prepared under an explicit
    # data_dir (or it is prepared as tfrecord), KeyError ("`splits` is empty") when the
    # dataset info exists without data, and FileNotFoundError for missing files.
    except (NotImplementedError, KeyError, FileNotFoundError) as e:
        raise DatasetNotPreparedError(
            f"tfds dataset {name!r} is not prepared (as array_record) in data dir "
            f"{directory!r} (the data_dir argument, else $DA_DATA_DIR, else "
            f"$TFDS_DATA_DIR, else ~/tensorflow_datasets); da_framework never downloads. "
            f"Prepare it (needs TensorFlow and network access) with: pip install "
            f"'da_framework[tf]' && tfds build {name} --data_dir {shlex.quote(directory)} "
            f"--file_format array_record  (tfds raised {type(e).__name__})."
        ) from e


def _label_names(source: RandomAccessSource, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """The ``label`` ClassLabel names of a tfds source; ``fallback`` if none are known.

    tfds fills some names (CIFAR-10's) only when preparing, so an unprepared spec (as in
    tfds's mock data) has just ``"0"``, ``"1"``, ...
    """
    try:
        names = tuple(source.dataset_info.features["label"].names)  # type: ignore[attr-defined]
    except (AttributeError, KeyError, TypeError):
        return fallback
    return fallback if names == tuple(str(i) for i in range(len(names))) else names


# ------------------------------------------------------------------------------ images


def preprocess_image(image: Any, size: int | None = None, channels: int | None = None) -> np.ndarray:
    """Converts a uint8 ``(H, W, C)`` image to float32 in [0, 1].

    Args:
      image: uint8 array of shape ``(H, W, C)``, C in {1, 3}.
      size: resize to ``(size, size)`` with PIL's bilinear filter (antialiased when
        shrinking; no letterbox, the aspect ratio is not kept); None keeps the size.
      channels: 1 converts RGB to gray (ITU-R 601 luma), 3 replicates gray to RGB;
        None keeps the channels.

    Returns:
      float32 array of shape ``(size or H, size or W, channels or C)``.
    """
    image = np.asarray(image, dtype=np.uint8)
    to_gray = channels == 1 and image.shape[-1] == 3
    if to_gray or (size is not None and image.shape[:2] != (size, size)):
        from PIL import Image

        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        pil = pil.convert("L") if to_gray else pil
        pil = pil if size is None else pil.resize((size, size), Image.Resampling.BILINEAR)
        image = np.asarray(pil).reshape(pil.size[1], pil.size[0], -1)
    if channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image.astype(np.float32) / np.float32(255.0)


def _image_record_fn(size: int | None, channels: int | None) -> Callable[[Record], Record]:
    def fn(record: Record) -> Record:
        return {
            "image": preprocess_image(record["image"], size, channels),
            "label": np.int32(record["label"]),
        }

    return fn


def image_domain(
    domain_name: str,
    tfds_name: str,
    data_dir: str | None,
    input_shape: tuple[int, int, int],
    description: str,
    class_names: tuple[str, ...] = _DIGIT_NAMES,
) -> Domain:
    """A 10-class image domain over tfds splits ``train[:90%]``/``train[90%:]``/``test``.

    Args:
      domain_name: registry name of the domain.
      tfds_name: tfds dataset with ``image`` (uint8) and ``label`` features.
      data_dir: see :func:`resolve_data_dir`.
      input_shape: ``(size, size, channels)`` of the preprocessed images; images are
        resized/converted when it differs from the stored shape.
      description: shown by ``da list``.
      class_names: used when the tfds feature spec has no real names.
    """
    size, _, channels = input_shape
    raw = open_tfds_splits(tfds_name, SPLITS_FROM_TRAIN, data_dir)
    fn = _image_record_fn(size, channels)
    return Domain(
        name=domain_name,
        splits={k: MappedSource(src, fn) for k, src in raw.items()},
        num_classes=len(class_names),
        input_shape=input_shape,
        description=description,
        class_names=_label_names(raw["train"], class_names),
    )


def local_or_tfds_digits(
    domain_name: str, dataset: str, data_dir: str | None, input_shape: tuple[int, int, int], description: str
) -> Domain:
    """A digit domain from ``<data_dir>/<dataset>/<dataset>.npz`` if present, else from tfds ``dataset``.

    The local file (layout of :mod:`da_framework.data.local`) wins; tfds stays for users who
    have it prepared.  Both give train/val/test = first 90% / last 10% of train / test, but
    of different orders (the file's, e.g. MNIST's idx order; tfds's shuffled storage order).

    Raises:
      DatasetNotPreparedError: neither exists (one line with the npz path and the tfds command).
    """
    from da_framework.data import local  # local imports this module

    if local.has_local(dataset, data_dir):
        return local.local_image_domain(domain_name, dataset, data_dir, input_shape, description)
    try:
        return image_domain(domain_name, dataset, data_dir, input_shape, description)
    except (DatasetNotPreparedError, ImportError) as e:
        tfds_hint = str(e) if isinstance(e, DatasetNotPreparedError) else f"tensorflow_datasets is not installed ({e})"
        raise DatasetNotPreparedError(
            f"{dataset} is not in the data dir: expected {local.local_path(dataset, data_dir)} (layout {local.LAYOUT}), "
            f"or a prepared tfds dataset: {tfds_hint}"
        ) from None


@register_domain("mnist", description="MNIST 28x28x1 in [0,1] (local npz or tfds)", needs_download=True)
def mnist(data_dir: str | None = None) -> Domain:
    """MNIST digits, float32 (28, 28, 1) in [0, 1]."""
    return local_or_tfds_digits("mnist", "mnist", data_dir, (28, 28, 1), "MNIST 28x28x1 in [0,1]")


@register_domain(
    "mnist32rgb",
    description="MNIST resized to 32x32, gray -> RGB (pairs with SVHN; local npz or tfds)",
    needs_download=True,
)
def mnist32rgb(data_dir: str | None = None) -> Domain:
    """MNIST bilinearly resized to 32x32 with gray replicated to RGB: float32 (32, 32, 3)."""
    return local_or_tfds_digits("mnist32rgb", "mnist", data_dir, (32, 32, 3), "MNIST 32x32x3 in [0,1]")


@register_domain("svhn_cropped", description="SVHN cropped digits 32x32x3 in [0,1]", needs_download=True)
def svhn_cropped(data_dir: str | None = None) -> Domain:
    """SVHN cropped digits, float32 (32, 32, 3) in [0, 1]."""
    return image_domain("svhn_cropped", "svhn_cropped", data_dir, (32, 32, 3), "SVHN 32x32x3")


@register_domain(
    "svhn_gray28",
    description="SVHN grayscale, resized to 28x28 (pairs with MNIST)",
    needs_download=True,
)
def svhn_gray28(data_dir: str | None = None) -> Domain:
    """SVHN as grayscale (ITU-R 601 luma) resized to 28x28: float32 (28, 28, 1)."""
    return image_domain("svhn_gray28", "svhn_cropped", data_dir, (28, 28, 1), "SVHN gray 28x28x1")


@register_domain("cifar10", description="CIFAR-10 32x32x3 in [0,1]", needs_download=True)
def cifar10(data_dir: str | None = None) -> Domain:
    """CIFAR-10, float32 (32, 32, 3) in [0, 1], with class names."""
    return image_domain("cifar10", "cifar10", data_dir, (32, 32, 3), "CIFAR-10 32x32x3", CIFAR10_CLASS_NAMES)


@register_domain(
    "imdb_reviews",
    description=f"IMDB sentiment, {IMDB_LENGTH} token ids, vocabulary {IMDB_VOCAB_SIZE}",
    needs_download=True,
)
def imdb_reviews(
    data_dir: str | None = None, *, vocab_size: int = IMDB_VOCAB_SIZE, length: int = IMDB_LENGTH
) -> Domain:
    """IMDB reviews as int32 token ids (0 = padding, 1 = out of vocabulary).

    Args:
      data_dir: see :func:`resolve_data_dir`.
      vocab_size: number of token ids; the vocabulary is built from the domain's
        ``train`` split on first use.
      length: token ids per review (truncated / zero-padded).
    """
    raw = open_tfds_splits("imdb_reviews", SPLITS_FROM_TRAIN, data_dir)
    encoder = TextEncoder(raw["train"], vocab_size, length)
    return Domain(
        name="imdb_reviews",
        splits={k: MappedSource(src, encoder) for k, src in raw.items()},
        num_classes=2,
        input_shape=(length,),
        modality="text",
        description=f"IMDB reviews, {length} token ids < {vocab_size}",
        class_names=_label_names(raw["train"], ("neg", "pos")),
    )
