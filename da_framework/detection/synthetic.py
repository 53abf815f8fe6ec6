"""A synthetic detection domain pair: "bird-like" source objects, "pedestrian-like" targets.

Generated deterministically with NumPy from a seed, offline, in about a second; it stands
in for PASCAL VOC birds -> persons where VOC is not prepared (and for fast tests).

Every image is 64x64x3 float32 in [0, 1]:

* background: a random two-colour linear gradient plus Gaussian pixel noise (std 0.04);
* clutter: 6-12 distractors of random flat colours without outline: line segments
  (1 px), small squares (3-6 px) and discs (radius 2-4 px);
* 1-3 objects of the domain's category, placed so that no two overlap with IoU > 0.2,
  each drawn with a 1-px dark outline (both categories share it: the low-level
  "object-ness" cue a detector can transfer, as birds and persons share edges and
  texture statistics in real images) and an internal two-colour stripe texture:

  - ``bird`` (source): wide objects, a horizontal ellipse body (width 12-22 px,
    height 0.5-0.7 x width) with a triangular wing on top and a small head disc at one
    end, horizontal stripes;
  - ``pedestrian`` (target): tall objects, a head disc over a rectangular torso and two
    legs (height 18-30 px, width 0.3-0.42 x height), vertical stripes.

The box of an object is the tight box of its drawn pixels.  Records have the fields of
the VOC catalog domains: ``{"image", "boxes": (MAX_BOXES, 4) normalised [ymin, xmin,
ymax, xmax] zero-padded, "box_mask", "is_difficult" (all False), "label": 1}``.

Splits (per domain): ``train`` (``num_train``), ``val`` (``num_eval``) and ``test``
(``num_eval``) images, drawn from disjoint seeds.  :func:`k_shot` picks a k-image
training subset.
"""

from __future__ import annotations

import functools

import numpy as np

from da_framework.data.domain import ArraySource, Domain, DomainError
from da_framework.data.registry import register_domain

IMAGE_SIZE = 64
MAX_BOXES = 4
CATEGORIES = ("bird", "pedestrian")
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}


def _stripes(rng: np.random.Generator, shape: tuple[int, int], vertical: bool) -> np.ndarray:
    """A (h, w, 3) two-colour stripe texture of random period 2-4 px."""
    h, w = shape
    period = int(rng.integers(2, 5))
    coord = np.arange(w if vertical else h)
    on = (coord // period) % 2 == 0
    c1, c2 = rng.uniform(0.55, 1.0, 3), rng.uniform(0.0, 0.45, 3)
    band = np.where(on[:, None], c1, c2)
    return np.broadcast_to(band[None, :, :] if vertical else band[:, None, :], (h, w, 3))


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _bird_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, y0: int, x0: int, w: int) -> np.ndarray:
    h = int(round(w * rng.uniform(0.5, 0.7)))
    cy, cx = y0 + h * 0.6, x0 + w / 2
    body = ((yy - cy) / (h * 0.4)) ** 2 + ((xx - cx) / (w * 0.4)) ** 2 <= 1.0
    # wing: triangle with apex above the body centre
    apex_y, base_y = y0, cy
    t = (yy - apex_y) / max(base_y - apex_y, 1.0)
    wing = (t >= 0) & (t <= 1) & (np.abs(xx - (cx + w * 0.1)) <= t * w * 0.25)
    side = 1 if rng.uniform() < 0.5 else -1
    head = _disc(yy, xx, cy - h * 0.15, cx + side * w * 0.42, max(h * 0.18, 1.5))
    return body | wing | head


def _pedestrian_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, y0: int, x0: int, h: int) -> np.ndarray:
    w = max(int(round(h * rng.uniform(0.3, 0.42))), 5)
    cx = x0 + w / 2
    r = w * 0.3
    head = _disc(yy, xx, y0 + r, cx, r)
    torso = (yy >= y0 + 2 * r) & (yy <= y0 + h * 0.62) & (np.abs(xx - cx) <= w / 2)
    legs_y = (yy > y0 + h * 0.62) & (yy <= y0 + h - 1)
    legs = legs_y & ((np.abs(xx - (cx - w * 0.25)) <= w * 0.15) | (np.abs(xx - (cx + w * 0.25)) <= w * 0.15))
    return head | torso | legs


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    pad = np.pad(mask, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return mask & ~inner


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_image(category: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draws one image of ``category``: ``(image (size, size, 3) float32, boxes (n, 4))``."""
    if category not in CATEGORIES:
        raise DomainError(f"unknown synthetic category {category!r}; valid: {', '.join(CATEGORIES)}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(angle) * yy + np.sin(angle) * xx) / size + 1) / 2
    image = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    for _ in range(int(rng.integers(6, 13))):
        colour = rng.uniform(0, 1, 3)
        kind = rng.integers(3)
        cy, cx = rng.uniform(0, size, 2)
        if kind == 0:
            t = np.linspace(0, 1, 40)
            ang, length = rng.uniform(0, np.pi), rng.uniform(8, 25)
            py = np.clip((cy + t * length * np.sin(ang)).astype(int), 0, size - 1)
            px = np.clip((cx + t * length * np.cos(ang)).astype(int), 0, size - 1)
            image[py, px] = colour
        elif kind == 1:
            s = rng.uniform(3, 6)
            image[(np.abs(yy - cy) <= s / 2) & (np.abs(xx - cx) <= s / 2)] = colour
        else:
            image[_disc(yy, xx, cy, cx, rng.uniform(2, 4))] = colour
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            if category == "bird":
                extent = int(rng.integers(12, 23))
                y0, x0 = rng.integers(0, size - extent, 2)
                mask = _bird_mask(rng, yy, xx, int(y0), int(x0), extent)
            else:
                extent = int(rng.integers(18, 31))
                y0, x0 = rng.integers(0, size - extent, 2)
                mask = _pedestrian_mask(rng, yy, xx, int(y0), int(x0), extent)
            rows, cols = np.nonzero(mask)
            if len(rows) == 0:
                continue
            box = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float64) / size
            if all(_box_iou(box, b) <= 0.2 for b in boxes):
                break
        else:
            continue
        ys, xs = rows.min(), cols.min()
        tex = _stripes(rng, (rows.max() - ys + 1, cols.max() - xs + 1), vertical=category == "pedestrian")
        region = image[ys : rows.max() + 1, xs : cols.max() + 1]
        local = mask[ys : rows.max() + 1, xs : cols.max() + 1]
        region[local] = tex[local]
        image[_outline(mask)] = rng.uniform(0.0, 0.12)
        boxes.append(box)
    image = image + rng.normal(0, 0.04, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), np.asarray(boxes, np.float32).reshape(-1, 4)


def render_split(category: str, num_images: int, seed: int, size: int = IMAGE_SIZE) -> ArraySource:
    """``num_images`` images of ``category`` from ``default_rng(seed)`` as an ArraySource."""
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, size, size, 3), np.float32)
    boxes = np.zeros((num_images, MAX_BOXES, 4), np.float32)
    mask = np.zeros((num_images, MAX_BOXES), bool)
    for i in range(num_images):
        images[i], b = render_image(category, rng, size)
        boxes[i, : len(b)], mask[i, : len(b)] = b, True
    return ArraySource({
        "image": images,
        "boxes": boxes,
        "box_mask": mask,
        "is_difficult": np.zeros_like(mask),
        "label": np.ones((num_images,), np.int32),
    })  # fmt: skip


@functools.cache
def synthetic_detection_domain(category: str, seed: int = 0, num_train: int = 1000, num_eval: int = 200) -> Domain:
    """The synthetic detection domain of ``category`` (``"bird"`` or ``"pedestrian"``).

    Args:
      category: which object kind the images hold.
      seed: base seed; split ``s`` of category ``c`` uses seed
        ``seed * 1000 + 10 * index(c) + {train: 0, val: 1, test: 2}[s]``.
      num_train: training images.
      num_eval: validation and test images (each).
    """
    if category not in CATEGORIES:
        raise DomainError(f"unknown synthetic category {category!r}; valid: {', '.join(CATEGORIES)}")
    base = seed * 1000 + 10 * CATEGORIES.index(category)
    sizes = {"train": num_train, "val": num_eval, "test": num_eval}
    return Domain(
        name=f"synthetic_det/{category}",
        splits={s: render_split(category, n, base + _SPLIT_SEED_OFFSET[s]) for s, n in sizes.items()},
        num_classes=2,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        description=f"synthetic 64x64 detection images of {category}-like objects on clutter, with boxes",
        class_names=(f"no {category}", category),
    )


def k_shot(source: ArraySource, k: int | None, seed: int) -> ArraySource:
    """A k-image subset of ``source`` drawn with ``default_rng(seed)`` (None: all images).

    Raises:
      DomainError: if k is not in ``[1, len(source)]``.
    """
    if k is None:
        return source
    if not 1 <= k <= len(source):
        raise DomainError(f"k-shot subset needs 1 <= k <= {len(source)} (the split's size), got k={k}")
    return source.subset(np.sort(np.random.default_rng(seed).permutation(len(source))[:k]))


@register_domain("synthetic_det/bird", description="synthetic 64x64 detection: bird-like wide objects + boxes")
def synthetic_bird(data_dir: str | None = None) -> Domain:
    """Synthetic detection source domain (bird-like objects); ``data_dir`` is unused."""
    del data_dir
    return synthetic_detection_domain("bird")


@register_domain(
    "synthetic_det/pedestrian", description="synthetic 64x64 detection: pedestrian-like tall objects + boxes"
)
def synthetic_pedestrian(data_dir: str | None = None) -> Domain:
    """Synthetic detection target domain (pedestrian-like objects); ``data_dir`` is unused."""
    del data_dir
    return synthetic_detection_domain("pedestrian")
