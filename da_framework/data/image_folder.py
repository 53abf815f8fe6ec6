"""Image-file domains: a folder of class folders, or an image list, decoded lazily.

The layout extends the project's one local layout (:mod:`da_framework.data.local`): a dataset
is a folder ``<data_dir>/<dataset>/...`` of the data dir (the ``data_dir`` config key, else
``$DA_DATA_DIR``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).  For image files
that folder holds either

* class folders, ``<folder>/<class>/<image>`` (torchvision's ``ImageFolder``; images may sit
  in sub-folders of a class folder), labels = the index of the class in the dataset's class
  list (sorted folder names for a plain image folder), or
* an image list, lines ``<relative path> <label>`` (tllib's ``image_list/*.txt``, DomainNet's
  ``<domain>_train.txt``); a path may contain spaces, the label is the last field.

Any folder of the data dir is a domain named ``imagefolder/<folder>`` (e.g.
``imagefolder/my_photos/day`` reads ``<data_dir>/my_photos/day/<class>/<image>``); the
published datasets (Office-31, Office-Home, VisDA-2017, DomainNet) are in
:mod:`da_framework.data.image_datasets`.  A name may end in ``@<crop>``
(``imagefolder/my_photos@64``): crop ``<crop>`` after resizing to ``round(crop * 256 / 224)``
instead of the default 256 -> 224.

Images are decoded (PIL, converted to RGB as tllib's loader does), resized and cropped per
record; nothing is held in memory but the paths.  The ``train`` split is a
:class:`~da_framework.data.domain.RandomMappedSource`: :func:`~da_framework.data.domain.batch_iterator`
decodes and augments inside grain's pipeline (in ``data_workers`` worker processes when > 0),
with a generator seeded from the stream seed and the element's position, so the stream is
deterministic for a seed.  ``val``/``test`` are :class:`~da_framework.data.domain.MappedSource`
with the test transform.  :class:`ImageTransform` holds the two transforms (tllib's defaults):

* train: resize to ``resize x resize`` (``resize_mode="square"``, tllib's ``ResizeImage``, PIL
  bicubic) or the shorter side to ``resize`` (``"shorter"``, torchvision's ``Resize``, bilinear),
  then a random resized crop to ``crop x crop`` (torchvision's ``RandomResizedCrop``: area
  fraction in ``scale``, log-uniform aspect ratio in ``ratio``, 10 tries, else the centre crop
  at the clamped ratio; bilinear), then a horizontal flip with probability ``flip_p``;
* test: the same resize, then the centre ``crop x crop`` (top/left ``round((H - crop) / 2)``).

Outputs are float32 ``(crop, crop, 3)`` in [0, 1], as every image domain of the project;
``mean``/``std`` (e.g. :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`, tllib's normalisation)
standardise them when given.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from da_framework.data.catalog import DatasetNotPreparedError, resolve_data_dir
from da_framework.data.domain import Domain, DomainError, MappedSource, RandomMappedSource, Record
from da_framework.data.registry import register_domain_resolver

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER_LAYOUT = "<data_dir>/<folder>/<class>/<image>"
DATA_DIR_HINT = (
    "the data dir is the data_dir config key, else $DA_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets"
)


def not_prepared(name: str, path: str, layout: str) -> DatasetNotPreparedError:
    """The one-line error for a dataset folder or list that is not in the data dir."""
    return DatasetNotPreparedError(f"{name} is not in the data dir: expected {path} (layout {layout}; {DATA_DIR_HINT})")


# ------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Resize + crop (+ train augmentation) of decoded images; see the module docstring.

    Attributes:
      resize: size of the resize before cropping (256).
      crop: output size (224).
      resize_mode: ``"square"`` (both sides to ``resize``, PIL bicubic: tllib's ``ResizeImage``)
        or ``"shorter"`` (shorter side to ``resize``, aspect kept, bilinear: torchvision's ``Resize``).
      scale: area fraction range of the train-time random resized crop.
      ratio: aspect-ratio (w / h) range of the random resized crop.
      flip_p: probability of the train-time horizontal flip.
      mean, std: per-channel standardisation after scaling to [0, 1] (None: none).
    """

    resize: int = 256
    crop: int = 224
    resize_mode: Literal["square", "shorter"] = "square"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        problems = [
            (not 0 < self.crop <= self.resize, f"crop {self.crop} must be in (0, resize={self.resize}]"),
            (self.resize_mode not in ("square", "shorter"), f"resize_mode {self.resize_mode!r} is not square/shorter"),
            (not 0 < self.scale[0] <= self.scale[1] <= 1, f"scale {self.scale} must satisfy 0 < lo <= hi <= 1"),
            (not 0 < self.ratio[0] <= self.ratio[1], f"ratio {self.ratio} must satisfy 0 < lo <= hi"),
            (not 0 <= self.flip_p <= 1, f"flip_p {self.flip_p} must be in [0, 1]"),
            ((self.mean is None) != (self.std is None), "give both mean and std, or neither"),
            (self.std is not None and (len(self.std) != 3 or min(self.std) <= 0), f"std {self.std}: not 3 values > 0"),
            (self.mean is not None and len(self.mean) != 3, f"mean {self.mean} must be 3 values"),
        ]
        for bad, message in problems:
            if bad:
                raise DomainError(f"ImageTransform: {message}")

    def resized(self, image: Any) -> Any:
        """The PIL image after the resize step."""
        from PIL import Image

        w, h = image.size
        if self.resize_mode == "square":
            size, resample = (self.resize, self.resize), Image.Resampling.BICUBIC
        else:
            short, long = (w, h) if w <= h else (h, w)
            other = int(self.resize * long / short)
            size, resample = ((self.resize, other) if w <= h else (other, self.resize)), Image.Resampling.BILINEAR
        return image if (w, h) == size else image.resize(size, resample)

    def test(self, image: Any) -> np.ndarray:
        """Resize, centre crop: float32 ``(crop, crop, 3)``."""
        im = self.resized(image)
        w, h = im.size
        top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        return self.to_array(im.crop((left, top, left + self.crop, top + self.crop)))

    def train(self, image: Any, rng: np.random.Generator) -> np.ndarray:
        """Resize, random resized crop, random horizontal flip: float32 ``(crop, crop, 3)``."""
        from PIL import Image

        im = self.resized(image)
        top, left, h, w = random_resized_crop_box(im.size[1], im.size[0], self.scale, self.ratio, rng)
        im = im.crop((left, top, left + w, top + h))
        if im.size != (self.crop, self.crop):
            im = im.resize((self.crop, self.crop), Image.Resampling.BILINEAR)
        out = self.to_array(im)
        return out[:, ::-1].copy() if rng.random() < self.flip_p else out

    def to_array(self, image: Any) -> np.ndarray:
        """PIL RGB image -> float32 ``(H, W, 3)`` in [0, 1], standardised when mean/std are set."""
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        if self.mean is not None and self.std is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop: area fraction in ``scale``, w/h log-uniform in ``ratio``.

    torchvision's ``RandomResizedCrop.get_params``: 10 tries, then the centre crop of the whole
    image clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode(path: str) -> Any:
    """The image at ``path`` as a PIL RGB image (one-line :class:`DomainError` if unreadable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DomainError(f"cannot read image {path}: {type(e).__name__}: {e}; replace or remove the file") from None


@dataclasses.dataclass(frozen=True)
class DecodeTest:
    """Record function of ``val``/``test``: ``{"path", "label"}`` -> ``{"image", "label"}`` (test transform)."""

    transform: ImageTransform

    def __call__(self, record: Record) -> Record:
        return {"image": self.transform.test(decode(record["path"])), "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class DecodeTrain:
    """Random record function of ``train``: decode, then the train transform with ``rng``."""

    transform: ImageTransform

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        return {"image": self.transform.train(decode(record["path"]), rng), "label": np.int32(record["label"])}


# ------------------------------------------------------------------------------ lists


@dataclasses.dataclass(frozen=True)
class ImageList:
    """A random-access source of ``{"path": str, "label": int32}`` records.

    Attributes:
      paths: image file paths.
      labels: int32 label of each path.
    """

    paths: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise DomainError(f"ImageList: {len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Record:
        return {"path": self.paths[index], "label": self.labels[index]}


def scan_image_folder(
    root: str, classes: Sequence[str] | None, name: str, layout: str = FOLDER_LAYOUT
) -> tuple[ImageList, tuple[str, ...]]:
    """The images of ``root/<class>/...`` and the class names (label = index in ``classes``).

    Args:
      root: the folder of class folders.
      classes: the dataset's class list (label ids); None: the sorted class folder names.
      name: the domain name, for messages.
      layout: the expected layout, for messages.

    Raises:
      DatasetNotPreparedError: ``root`` does not exist.
      DomainError: no class folder, a folder not in ``classes``, or a class folder without images.
    """
    if not os.path.isdir(root):
        raise not_prepared(name, root, layout)
    folders = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise DomainError(f"{root} has no class folders (layout {layout})")
    class_names = tuple(classes) if classes is not None else tuple(folders)
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [d for d in folders if d not in index]
    if unknown:
        raise DomainError(
            f"{os.path.join(root, unknown[0])} is not a class of {name} (layout {layout}; classes: "
            f"{', '.join(class_names[:5])}, ... {len(class_names)} in all); remove or rename the folder"
        )
    paths: list[str] = []
    labels: list[int] = []
    for folder in folders:
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise DomainError(
                f"class folder {os.path.join(root, folder)} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        paths += found
        labels += [index[folder]] * len(found)
    return ImageList(tuple(paths), np.asarray(labels, np.int32)), class_names


def read_image_list(list_file: str, base_dir: str, num_classes: int) -> ImageList:
    """The images of an image list (lines ``<relative path> <label>``), paths relative to ``base_dir``.

    Raises:
      DomainError: a malformed line, a label outside ``[0, num_classes)``, an empty list, or a
        first image that does not exist (paths resolved against the wrong folder).
    """
    paths: list[str] = []
    labels: list[int] = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)
            try:
                label = int(parts[1]) if len(parts) == 2 else None
            except ValueError:
                label = None
            if label is None:
                raise DomainError(f"{list_file}:{lineno}: expected '<relative path> <label>', got {line.strip()!r}")
            if not 0 <= label < num_classes:
                raise DomainError(f"{list_file}:{lineno}: label {label} is outside [0, {num_classes})")
            path = parts[0].strip()
            paths.append(path if os.path.isabs(path) else os.path.join(base_dir, path))
            labels.append(label)
    if not paths:
        raise DomainError(f"{list_file} lists no images (lines '<relative path> <label>')")
    if not os.path.isfile(paths[0]):
        raise DomainError(
            f"{list_file}: its first image {paths[0]} does not exist (paths are read relative to {base_dir})"
        )
    return ImageList(tuple(paths), np.asarray(labels, np.int32))


# ---------------------------------------------------------------------------- domains


def make_image_domain(
    name: str,
    train: ImageList,
    test: ImageList,
    class_names: Sequence[str],
    transform: ImageTransform | None = None,
    description: str = "",
    val: ImageList | None = None,
) -> Domain:
    """A :class:`Domain` over image lists: ``train`` augmented, ``val`` (default ``test``) and ``test`` not."""
    t = transform or ImageTransform()
    evaluate = DecodeTest(t)
    return Domain(
        name=name,
        splits={
            "train": RandomMappedSource(train, DecodeTrain(t)),
            "val": MappedSource(test if val is None else val, evaluate),
            "test": MappedSource(test, evaluate),
        },
        num_classes=len(class_names),
        input_shape=(t.crop, t.crop, 3),
        description=description,
        class_names=tuple(class_names),
    )


def image_folder_domain(
    root: str, name: str | None = None, transform: ImageTransform | None = None, classes: Sequence[str] | None = None
) -> Domain:
    """A domain over ``root/<class>/<image>``: every split holds every image (train augmented).

    Args:
      root: the folder of class folders.
      name: domain name (default ``imagefolder/<basename>``).
      transform: resize/crop sizes (default 256 -> 224).
      classes: the class list fixing label ids (default: the sorted folder names).
    """
    name = name or f"imagefolder/{os.path.basename(os.path.normpath(root))}"
    images, class_names = scan_image_folder(root, classes, name)
    return make_image_domain(name, images, images, class_names, transform, f"image folder {root}")


def split_size(name: str) -> tuple[str, ImageTransform]:
    """``"x@64"`` -> ``("x", ImageTransform(resize=73, crop=64))``; ``"x"`` -> ``("x", ImageTransform())``."""
    base, at, size = name.rpartition("@")
    if not at:
        return name, ImageTransform()
    if not size.isdigit() or not 8 <= int(size) <= 4096:
        raise DomainError(
            f"bad size suffix in domain {name!r}: expected '@<crop>' with an integer crop in [8, 4096], e.g. '@64'"
        )
    crop = int(size)
    return base, ImageTransform(resize=round(crop * 256 / 224), crop=crop)


@register_domain_resolver("imagefolder/", "imagefolder/<folder of the data dir>[@<crop>]")
def resolve_image_folder(name: str, data_dir: str | None = None) -> Domain:
    """``imagefolder/<folder>[@<crop>]`` -> the image folder ``<data_dir>/<folder>/<class>/<image>``."""
    base, transform = split_size(name)
    folder = base[len("imagefolder/"):]
    parts = folder.replace("\\", "/").split("/")
    if not folder or os.path.isabs(folder) or any(p in ("", ".", "..") for p in parts):
        raise DomainError(
            f"bad image-folder domain {name!r}: use imagefolder/<folder> with a relative folder of the data dir"
        )
    root = os.path.join(resolve_data_dir(data_dir), *parts)
    images, class_names = scan_image_folder(root, None, base)
    return make_image_domain(name, images, images, class_names, transform, f"image folder {root}")
