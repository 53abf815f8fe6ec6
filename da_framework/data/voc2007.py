"""PASCAL VOC 2007 single-category domains (classification with boxes) from prepared tfds data.

``voc2007/bird`` and ``voc2007/person``: the VOC 2007 images containing >= 1 object of the
category, resized (plain, no letterbox) to 128x128x3 float32 in [0, 1], with that category's
boxes.  Records are ``{"image", "boxes": float32 (max_boxes, 4) normalised
[ymin, xmin, ymax, xmax] (a plain resize keeps them valid), zero-padded, "box_mask": bool
(max_boxes,), "is_difficult": bool (max_boxes,), "label": int32}``, where ``label`` is 1
when the image contains the category (always, given the filtering) and only boxes of
the category are kept (the first ``max_boxes``).  :func:`voc_objects` is the one reader of
a tfds VOC record's objects (the detection domains of :mod:`da_framework.detection.voc` use it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from da_framework.data.catalog import open_tfds_splits, preprocess_image
from da_framework.data.domain import Domain, DomainError, MappedSource, RandomAccessSource, Record, iterate_records
from da_framework.data.registry import register_domain

VOC_SPLITS = {"train": "train", "val": "validation", "test": "test"}
# tfds's voc label list (``features["objects"]["label"].names``; a test checks it):
# bird = 2, person = 14.
VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_IMAGE_SIZE, VOC_MAX_BOXES = 128, 50  # more boxes of the category are dropped

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


def voc_objects(record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return bool(np.any(voc_objects(record)[1] == label_id))


def voc_record(record: Record, label_id: int, image_size: int, max_boxes: int) -> Record:
    """Preprocesses a tfds VOC record for one category (class ``label_id``).

    Returns:
      ``{"image": float32 (image_size, image_size, 3) in [0, 1], "boxes": float32
      (max_boxes, 4), "box_mask": bool (max_boxes,), "is_difficult": bool (max_boxes,),
      "label": int32}``: the first ``max_boxes`` boxes of the category in tfds's
      normalised ``[ymin, xmin, ymax, xmax]``, zero-padded; ``label`` is 1 when the image
      has an object of the category.
    """
    boxes, labels, difficult = voc_objects(record)
    match = labels == label_id
    image = preprocess_image(record["image"], image_size, 3)
    return boxes_record(image, boxes[match][:max_boxes], difficult[match][:max_boxes], max_boxes, bool(match.any()))


def boxes_record(image: np.ndarray, boxes: np.ndarray, difficult: np.ndarray, max_boxes: int, present: bool) -> Record:
    """A record of an image and its first ``len(boxes) <= max_boxes`` boxes, zero-padded to
    ``max_boxes`` with a ``box_mask``; ``label`` is ``present`` as int32."""
    k = len(boxes)
    out_boxes = np.zeros((max_boxes, 4), dtype=np.float32)
    out_boxes[:k] = boxes
    out_difficult = np.zeros((max_boxes,), dtype=bool)
    out_difficult[:k] = difficult
    return {
        "image": image,
        "boxes": out_boxes,
        "box_mask": np.arange(max_boxes) < k,
        "is_difficult": out_difficult,
        "label": np.int32(present),
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
