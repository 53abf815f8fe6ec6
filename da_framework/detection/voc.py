"""PASCAL VOC 2007 / 2012 detection domains (tfds ``voc/2007``, ``voc/2012``) for one category.

Built on the catalog's reader (:func:`da_framework.data.catalog.open_tfds_splits`: lazy
``tfds.data_source``, never downloads, :class:`~da_framework.data.catalog.DatasetNotPreparedError`
with the ``tfds build`` command when the data is missing) and its image filter
(:class:`~da_framework.data.voc2007.FilteredSource`): a domain holds the images with at
least one object of the category, and only that category's boxes.

Differences from the catalog's ``voc2007/<category>`` classification-style domains:

* both years; splits ``train``/``val``/``test`` are tfds ``train``/``validation``/``test``
  for 2007 and ``train[:90%]``/``train[90%:]``/``validation`` for 2012 (tfds's VOC 2012
  ``test`` split has no annotations);
* letterboxing (default): the image is resized (PIL bilinear) so that its longer side
  is ``image_size``, keeping the aspect ratio, and zero-padded at the bottom/right to
  ``(image_size, image_size, 3)``; the normalised boxes are scaled by the kept fraction
  so they stay on the objects (``letterbox=False``: plain resize, boxes unchanged);
* :func:`to_array_source` loads a split into memory for the detector's training loop
  (64 x 64 x 3 float32 is 48 KiB per image).

Object sequences of unequal lengths (tfds's mock data draws ``objects/bbox``,
``objects/label`` and ``objects/is_difficult`` lengths independently; real VOC never does)
are truncated to the shortest, as in :func:`da_framework.data.voc2007.voc_objects`, the one reader of VOC objects.  Difficult boxes are
kept, flagged in ``is_difficult``: VOC evaluation ignores them; training uses them as
ordinary boxes.
"""

from __future__ import annotations

import functools

import numpy as np

from da_framework.data.catalog import open_tfds_splits, preprocess_image
from da_framework.data.voc2007 import VOC_CLASS_NAMES, FilteredSource, boxes_record, contains_label, voc_objects
from da_framework.data.domain import ArraySource, Domain, DomainError, MappedSource, RandomAccessSource, Record

YEARS = {
    2007: {"train": "train", "val": "validation", "test": "test"},
    2012: {"train": "train[:90%]", "val": "train[90%:]", "test": "validation"},
}
IMAGE_SIZE, MAX_BOXES = 64, 8


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float]:
    """Resizes uint8 ``image`` (H, W, 3) to fit ``size`` keeping its aspect, zero-pads.

    Returns:
      ``(float32 (size, size, 3) in [0, 1], fy, fx)`` where ``fy = new_h / size`` and
      ``fx = new_w / size`` scale normalised box coordinates.
    """
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise DomainError(f"cannot letterbox an empty image of shape {image.shape}")
    scale = size / max(h, w)
    nh, nw = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.zeros((size, size, 3), np.float32)
    out[:nh, :nw] = resized.reshape(nh, nw, -1)[..., :3].astype(np.float32) / 255.0
    return out, nh / size, nw / size


def voc_detection_record(
    record: Record, label_id: int, image_size: int, max_boxes: int, use_letterbox: bool = True
) -> Record:
    """Preprocesses a raw tfds VOC record for the category ``label_id``.

    Returns:
      ``{"image": float32 (image_size, image_size, 3), "boxes": float32 (max_boxes, 4)
      normalised [ymin, xmin, ymax, xmax] on the (letterboxed) image, zero-padded,
      "box_mask": bool, "is_difficult": bool, "label": int32 1 if the category is present}``.
    """
    boxes, labels, difficult = voc_objects(record)
    match = labels == label_id
    kept, kept_difficult = boxes[match][:max_boxes], difficult[match][:max_boxes]
    if use_letterbox:
        image, fy, fx = letterbox(record["image"], image_size)
        kept = kept * np.array([fy, fx, fy, fx], np.float32)
    else:
        image = preprocess_image(record["image"], image_size, 3)
    return boxes_record(image, kept, kept_difficult, max_boxes, bool(match.any()))


def voc_detection_domain(
    category: str,
    year: int = 2007,
    data_dir: str | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    max_boxes: int = MAX_BOXES,
    use_letterbox: bool = True,
    in_memory: bool = True,
) -> Domain:
    """VOC ``year`` images containing ``category``, with that category's boxes.

    Args:
      category: a VOC class name, e.g. ``"bird"`` or ``"person"``.
      year: 2007 or 2012.
      data_dir: see :func:`da_framework.data.catalog.resolve_data_dir`.
      image_size: output side in pixels.
      max_boxes: boxes kept per image (more are dropped).
      use_letterbox: keep the aspect ratio and pad (default) instead of a plain resize.
      in_memory: load every split into an :class:`ArraySource` (what
        :func:`da_framework.detection.train.fit` trains on); False keeps lazy sources.

    Raises:
      DomainError: unknown category or year.
      DatasetNotPreparedError: ``voc/<year>`` is not prepared in the data dir.
    """
    if category not in VOC_CLASS_NAMES:
        raise DomainError(f"unknown VOC category {category!r}; valid: {', '.join(VOC_CLASS_NAMES)}")
    if year not in YEARS:
        raise DomainError(f"unknown VOC year {year!r}; valid: {', '.join(map(str, YEARS))}")
    import tensorflow_datasets as tfds

    label_id = VOC_CLASS_NAMES.index(category)
    name = f"voc/{year}"
    raw = open_tfds_splits(name, YEARS[year], data_dir)
    scan = open_tfds_splits(name, YEARS[year], data_dir, {"image": tfds.decode.SkipDecoding()})
    keep = functools.partial(contains_label, label_id=label_id)
    fn = functools.partial(
        voc_detection_record, label_id=label_id, image_size=image_size, max_boxes=max_boxes, use_letterbox=use_letterbox
    )
    splits: dict[str, RandomAccessSource] = {
        k: MappedSource(FilteredSource(src, keep, scan[k]), fn) for k, src in raw.items()
    }
    if in_memory:
        splits = {k: to_array_source(v) for k, v in splits.items()}
    return Domain(
        name=f"voc{year}_det/{category}",
        splits=splits,
        num_classes=2,
        input_shape=(image_size, image_size, 3),
        description=f"VOC {year} images with a {category}, {image_size}px letterboxed, {category} boxes",
        class_names=(f"no {category}", category),
    )


def to_array_source(source: RandomAccessSource) -> ArraySource:
    """Reads every record of ``source`` into an in-memory :class:`ArraySource`.

    Raises:
      DomainError: when ``source`` is empty (e.g. no image of the category).
    """
    records = [source[i] for i in range(len(source))]
    if not records:
        raise DomainError("the split holds no image of the category (nothing to load)")
    return ArraySource({k: np.stack([r[k] for r in records]) for k in records[0]})
