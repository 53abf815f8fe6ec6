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
                    :func:`tokenize`, :func:`build_vocabulary`, :func:`encode`; the
                    vocabulary, 20,000 ids, is built once per domain, on first use, from
                    the domain's ``train`` split)
``voc2007/bird``    PASCAL VOC 2007 images containing >= 1 bird, resized (plain, no
                    letterbox) to 128x128x3 float32 in [0, 1], with the bird boxes
``voc2007/person``  the same for persons
==================  ======================================================================

VOC records are ``{"image", "boxes": float32 (max_boxes, 4) normalised
[ymin, xmin, ymax, xmax] (a plain resize keeps them valid), zero-padded, "box_mask": bool
(max_boxes,), "is_difficult": bool (max_boxes,), "label": int32}``, where ``label`` is 1
when the image contains the category (always, given the filtering) and only boxes of
the category are kept (the first ``max_boxes``).

Resizing uses PIL's bilinear filter on the uint8 image (antialiased when shrinking),
PIL being what tfds itself decodes images with when TensorFlow and OpenCV are absent.
"""

from __future__ import annotations

import collections
import functools
import os
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from da_framework.data.domain import Domain, DomainError, MappedSource, RandomAccessSource, Record
from da_framework.data.registry import register_domain
from da_framework.errors import UserError

SPLITS_FROM_TRAIN = {"train": "train[:90%]", "val": "train[90%:]", "test": "test"}
VOC_SPLITS = {"train": "train", "val": "validation", "test": "test"}
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# tfds's voc label list (``features["objects"]["label"].names``; a test checks it):
# bird = 2, person = 14.
VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
PAD_ID, OOV_ID = 0, 1
IMDB_VOCAB_SIZE, IMDB_LENGTH = 20_000, 256
VOC_IMAGE_SIZE, VOC_MAX_BOXES = 128, 50  # more boxes of the category are dropped
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


def iterate_records(source: RandomAccessSource) -> Iterator[Record]:
    """Yields every record of ``source`` in order."""
    # Not ``__getitems__``: tfds's mock data sources implement it wrongly.
    return (source[i] for i in range(len(source)))


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


# -------------------------------------------------------------------------------- text

_WORD = re.compile(r"[a-z0-9]+")


def _as_str(text: Any) -> str:
    if isinstance(text, np.ndarray):
        text = text.item()
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def tokenize(text: str | bytes) -> list[str]:
    """Lowercases ``text`` and splits it on every run of non-[a-z0-9] characters.

    >>> tokenize("It's GREAT, 10/10!")
    ['it', 's', 'great', '10', '10']
    """
    return _WORD.findall(_as_str(text).lower())


def build_vocabulary(texts: Iterable[str | bytes], size: int) -> dict[str, int]:
    """Builds a word -> id vocabulary with ids in ``[0, size)``, deterministically.

    Ids 0 (:data:`PAD_ID`) and 1 (:data:`OOV_ID`) are reserved; the ``size - 2`` most
    frequent words (by token count over ``texts``, ties broken alphabetically) get ids
    2, 3, ... in that order.  The result depends only on the multiset of texts.
    """
    if size < 2:
        raise UserError(f"vocabulary size must be >= 2 (pad and OOV ids), got {size}")
    counts = collections.Counter(w for t in texts for w in tokenize(t))
    ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[: size - 2]
    return {w: i + 2 for i, (w, _) in enumerate(ranked)}


def encode(text: str | bytes, vocab: Mapping[str, int], length: int) -> np.ndarray:
    """Token ids of ``text``: int32 ``(length,)``, truncated or 0-padded at the end.

    Words missing from ``vocab`` get :data:`OOV_ID` (1).
    """
    ids = [vocab.get(w, OOV_ID) for w in tokenize(text)[:length]]
    out = np.full((length,), PAD_ID, dtype=np.int32)
    out[: len(ids)] = ids
    return out


class TextEncoder:
    """Per-record function of text domains, with a vocabulary built lazily, once.

    Attributes:
      corpus: the source whose ``"text"`` fields build the vocabulary.
      size: number of token ids (vocabulary words + 2).
      length: fixed number of token ids per record.
    """

    def __init__(self, corpus: RandomAccessSource, size: int, length: int) -> None:
        self.corpus, self.size, self.length = corpus, size, length

    @functools.cached_property
    def vocab(self) -> dict[str, int]:
        """The word -> id vocabulary of the corpus (built on first access)."""
        return build_vocabulary((r["text"] for r in iterate_records(self.corpus)), self.size)

    def __call__(self, record: Record) -> Record:
        """Maps a tfds ``{"text", "label"}`` record to int32 token ids and label."""
        return {
            "text": encode(record["text"], self.vocab, self.length),
            "label": np.int32(record["label"]),
        }


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


# ---------------------------------------------------------------------------- VOC 2007


class FilteredSource:
    """Random-access view of the records of ``source`` for which ``keep`` is true.

    The matching indices are found once, on first use, by scanning ``scan`` (a cheaper
    view of the same records, e.g. one that skips image decoding) or ``source``.
    """

    def __init__(
        self,
        source: RandomAccessSource,
        keep: Callable[[Record], bool],
        scan: RandomAccessSource | None = None,
    ) -> None:
        self.source, self.keep, self.scan = source, keep, scan

    @functools.cached_property
    def indices(self) -> np.ndarray:
        """Indices into ``source`` of the kept records."""
        try:
            return self._matching(self.scan if self.scan is not None else self.source)
        # tfds's mock data cannot serve a skip-decoding view: it re-encodes its random
        # records, which needs TensorFlow (ImportError) and equal sequence lengths
        # (ValueError).  Real data never fails here, and fully decoded records would
        # raise the same errors again.
        except (ImportError, ValueError):
            return self._matching(self.source)

    def _matching(self, records: RandomAccessSource) -> np.ndarray:
        keep = [i for i, r in enumerate(iterate_records(records)) if self.keep(r)]
        return np.asarray(keep, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        return self.source[int(self.indices[index])]


def _objects(record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bbox (n, 4), label (n,), is_difficult (n,)) of a VOC record's objects.

    Real VOC records have sequences of equal length; tfds's mock data draws each length
    independently, so all three are truncated to the shortest.
    """
    objects = record["objects"]
    boxes = np.asarray(objects["bbox"], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(objects["label"]).reshape(-1)
    difficult = np.asarray(objects["is_difficult"], dtype=bool).reshape(-1)
    n = min(len(boxes), len(labels), len(difficult))
    return boxes[:n], labels[:n], difficult[:n]


def contains_label(record: Record, label_id: int) -> bool:
    """Whether a tfds VOC record has at least one object of class ``label_id``."""
    return bool(np.any(_objects(record)[1] == label_id))


def voc_record(record: Record, label_id: int, image_size: int, max_boxes: int) -> Record:
    """Preprocesses a tfds VOC record for one category (class ``label_id``).

    Returns:
      ``{"image": float32 (image_size, image_size, 3) in [0, 1], "boxes": float32
      (max_boxes, 4), "box_mask": bool (max_boxes,), "is_difficult": bool (max_boxes,),
      "label": int32}``: the first ``max_boxes`` boxes of the category in tfds's
      normalised ``[ymin, xmin, ymax, xmax]``, zero-padded; ``label`` is 1 when the image
      has an object of the category.
    """
    boxes, labels, difficult = _objects(record)
    match = labels == label_id
    kept = boxes[match][:max_boxes]
    k = len(kept)
    out_boxes = np.zeros((max_boxes, 4), dtype=np.float32)
    out_boxes[:k] = kept
    out_difficult = np.zeros((max_boxes,), dtype=bool)
    out_difficult[:k] = difficult[match][:max_boxes]
    return {
        "image": preprocess_image(record["image"], image_size, 3),
        "boxes": out_boxes,
        "box_mask": np.arange(max_boxes) < k,
        "is_difficult": out_difficult,
        "label": np.int32(match.any()),
    }


def voc2007_domain(
    category: str,
    data_dir: str | None = None,
    *,
    image_size: int = VOC_IMAGE_SIZE,
    max_boxes: int = VOC_MAX_BOXES,
) -> Domain:
    """The VOC 2007 images containing ``category``, with that category's boxes.

    Args:
      category: a name of :data:`VOC_CLASS_NAMES`, e.g. ``"bird"``.
      data_dir: see :func:`resolve_data_dir`.
      image_size: images are resized (plainly) to ``(image_size, image_size, 3)``.
      max_boxes: boxes per record (extra boxes are dropped, missing ones zero-padded).
    """
    import tensorflow_datasets as tfds

    if category not in VOC_CLASS_NAMES:
        raise DomainError(f"unknown VOC category {category!r}; valid: {', '.join(VOC_CLASS_NAMES)}")
    label_id = VOC_CLASS_NAMES.index(category)
    raw = open_tfds_splits("voc/2007", VOC_SPLITS, data_dir)
    scan = open_tfds_splits("voc/2007", VOC_SPLITS, data_dir, {"image": tfds.decode.SkipDecoding()})
    keep = functools.partial(contains_label, label_id=label_id)
    fn = functools.partial(voc_record, label_id=label_id, image_size=image_size, max_boxes=max_boxes)
    return Domain(
        name=f"voc2007/{category}",
        splits={k: MappedSource(FilteredSource(src, keep, scan[k]), fn) for k, src in raw.items()},
        num_classes=2,
        input_shape=(image_size, image_size, 3),
        description=f"VOC 2007 images with a {category}, {image_size}px, {category} boxes",
        class_names=(f"no {category}", category),
    )


@register_domain("voc2007/bird", description="VOC 2007 images with birds + bird boxes", needs_download=True)
def voc2007_bird(data_dir: str | None = None) -> Domain:
    """VOC 2007 images containing a bird (tfds label 2), with the bird boxes."""
    return voc2007_domain("bird", data_dir)


@register_domain("voc2007/person", description="VOC 2007 images with persons + person boxes", needs_download=True)
def voc2007_person(data_dir: str | None = None) -> Domain:
    """VOC 2007 images containing a person (tfds label 14), with the person boxes."""
    return voc2007_domain("person", data_dir)
