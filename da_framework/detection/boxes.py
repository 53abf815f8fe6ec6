"""Box utilities as pure JAX functions: IoU, centre-point encoding/decoding, NMS.

Boxes are ``[ymin, xmin, ymax, xmax]`` in normalised image coordinates (the tfds VOC
convention), float32, shape ``(..., 4)``; a box with ``ymax <= ymin`` or ``xmax <= xmin``
has zero area.

The encoding is the one of the centre-point ("objects as points") head of
Zhou, Wang & Kraehenbuehl, "Objects as Points", arXiv:1904.07850, 2019 (CenterNet), on a
``(G, G)`` output grid:

* a per-class heatmap with a Gaussian peak at each object's centre cell; the Gaussian's
  standard deviations are ``sigma_scale`` times the box height and width in cells (the
  box-shaped Gaussian of TTFNet, Liu et al., AAAI 2020, eq. 2, instead of CenterNet's
  radius rule), the heatmap being the element-wise maximum over objects of a class;
* at each centre cell, the sub-cell offset of the centre (in cells, in [0, 1)) and the
  log of the box height and width in cells.

Non-maximum suppression is the greedy one (a box is kept when its IoU with every kept
higher-scoring box is at most the threshold), written with a fixed output size so it can
be jitted and vmapped.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from da_framework.errors import UserError


class BoxError(UserError):
    """Raised for boxes of the wrong shape or bad box-utility arguments."""


def _check_boxes(boxes: jax.Array, name: str) -> None:
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise BoxError(f"{name} must have shape (..., 4) [ymin, xmin, ymax, xmax], got {boxes.shape}")


def box_area(boxes: jax.Array) -> jax.Array:
    """Areas of ``boxes`` (..., 4); zero for empty or inverted boxes."""
    _check_boxes(boxes, "boxes")
    h = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    w = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return h * w


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4): shape (n, m).

    The IoU of two zero-area boxes is defined as 0 (not NaN).
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise BoxError(f"pairwise_iou takes (n, 4) and (m, 4) arrays, got {a.shape} and {b.shape}")
    top = jnp.maximum(a[:, None, 0], b[None, :, 0])
    left = jnp.maximum(a[:, None, 1], b[None, :, 1])
    bottom = jnp.minimum(a[:, None, 2], b[None, :, 2])
    right = jnp.minimum(a[:, None, 3], b[None, :, 3])
    inter = jnp.maximum(bottom - top, 0.0) * jnp.maximum(right - left, 0.0)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


# ------------------------------------------------------------------ centre-point targets


class CenterTargets(NamedTuple):
    """Training targets of the centre-point head on a ``(G, G)`` grid.

    Attributes:
      heatmap: ``(G, G, C)`` in [0, 1], exactly 1 at each object's centre cell.
      offset: ``(G, G, 2)`` sub-cell (y, x) offset of the centre, at centre cells.
      log_size: ``(G, G, 2)`` log of (height, width) in cells, at centre cells.
      mask: ``(G, G)`` float, 1 at the centre cell of at least one object.
    """

    heatmap: jax.Array
    offset: jax.Array
    log_size: jax.Array
    mask: jax.Array


def encode_centers(
    boxes: jax.Array,
    labels: jax.Array,
    box_mask: jax.Array,
    grid_size: int,
    num_classes: int,
    sigma_scale: float = 1.0 / 6.0,
) -> CenterTargets:
    """Encodes one image's boxes as centre-point targets (jit-able; vmap over images).

    Args:
      boxes: ``(n, 4)`` normalised boxes (padding rows allowed).
      labels: ``(n,)`` int class ids in ``[0, num_classes)``.
      box_mask: ``(n,)`` bool, False for padding rows (they are ignored).
      grid_size: G, the output grid side.
      num_classes: C.
      sigma_scale: Gaussian std as a fraction of the box size (TTFNet's alpha / 6 with
        alpha = 1 gives 1/6).

    Returns:
      :class:`CenterTargets`.  When two objects share a centre cell, the regression
      targets of the later one win.
    """
    _check_boxes(boxes, "boxes")
    g = float(grid_size)
    valid = box_mask.astype(bool) & (box_area(boxes) > 0)
    cy = (boxes[:, 0] + boxes[:, 2]) * 0.5 * g
    cx = (boxes[:, 1] + boxes[:, 3]) * 0.5 * g
    h = jnp.maximum((boxes[:, 2] - boxes[:, 0]) * g, 1e-3)
    w = jnp.maximum((boxes[:, 3] - boxes[:, 1]) * g, 1e-3)
    iy = jnp.clip(jnp.floor(cy), 0, grid_size - 1).astype(jnp.int32)
    ix = jnp.clip(jnp.floor(cx), 0, grid_size - 1).astype(jnp.int32)

    grid = jnp.arange(grid_size, dtype=jnp.float32)
    sy, sx = jnp.maximum(sigma_scale * h, 0.25), jnp.maximum(sigma_scale * w, 0.25)
    # Gaussians centred on the centre cell (so the peak is exactly 1 there).
    gy = jnp.exp(-((grid[None, :] - iy[:, None]) ** 2) / (2 * sy[:, None] ** 2))  # (n, G)
    gx = jnp.exp(-((grid[None, :] - ix[:, None]) ** 2) / (2 * sx[:, None] ** 2))
    gauss = gy[:, :, None] * gx[:, None, :] * valid[:, None, None]  # (n, G, G)
    onehot = jax.nn.one_hot(labels, num_classes) * valid[:, None]  # (n, C)
    heatmap = jnp.max(gauss[:, :, :, None] * onehot[:, None, None, :], axis=0, initial=0.0)

    # Padding rows scatter to an out-of-range cell and are dropped.
    sy_idx = jnp.where(valid, iy, grid_size)
    offset = jnp.zeros((grid_size, grid_size, 2)).at[sy_idx, ix].set(
        jnp.stack([cy - iy, cx - ix], -1), mode="drop"
    )
    log_size = jnp.zeros((grid_size, grid_size, 2)).at[sy_idx, ix].set(
        jnp.stack([jnp.log(h), jnp.log(w)], -1), mode="drop"
    )
    mask = jnp.zeros((grid_size, grid_size)).at[sy_idx, ix].set(1.0, mode="drop")
    return CenterTargets(heatmap, offset, log_size, mask)


class Detections(NamedTuple):
    """A fixed number K of detections per image (batch axes in front).

    Attributes:
      boxes: ``(..., K, 4)`` normalised boxes, clipped to the image.
      scores: ``(..., K)`` in [0, 1], sorted decreasingly.
      labels: ``(..., K)`` int32 class ids.
    """

    boxes: jax.Array
    scores: jax.Array
    labels: jax.Array


def decode_centers(
    heatmap_logits: jax.Array, offset: jax.Array, log_size: jax.Array, top_k: int = 20
) -> Detections:
    """Decodes one image's head outputs into its ``top_k`` best detections (jit-able).

    Peaks are heatmap cells equal to the maximum of their 3x3 neighbourhood (CenterNet's
    max-pool "NMS"); the ``top_k`` highest peaks over all cells and classes become boxes
    centred at ``(cell + offset) / G`` of size ``exp(log_size) / G``.

    Args:
      heatmap_logits: ``(G, G, C)`` logits of the heatmap.
      offset: ``(G, G, 2)`` predicted sub-cell offsets.
      log_size: ``(G, G, 2)`` predicted log (height, width) in cells.
      top_k: K, detections returned (K <= G * G * C).
    """
    gh, gw, c = heatmap_logits.shape
    if top_k > gh * gw * c:
        raise BoxError(f"top_k={top_k} exceeds the {gh * gw * c} heatmap cells; lower top_k")
    heat = jax.nn.sigmoid(heatmap_logits)
    pooled = jax.lax.reduce_window(heat, -jnp.inf, jax.lax.max, (3, 3, 1), (1, 1, 1), "SAME")
    peaks = jnp.where(heat == pooled, heat, 0.0)
    scores, flat = jax.lax.top_k(peaks.reshape(-1), top_k)
    cell, labels = flat // c, (flat % c).astype(jnp.int32)
    iy, ix = cell // gw, cell % gw
    cy = (iy + offset[iy, ix, 0]) / gh
    cx = (ix + offset[iy, ix, 1]) / gw
    size = jnp.exp(jnp.clip(log_size[iy, ix], -10.0, 10.0))
    h, w = size[:, 0] / gh, size[:, 1] / gw
    boxes = jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
    return Detections(jnp.clip(boxes, 0.0, 1.0), scores, labels)


# ------------------------------------------------------------------------------------ NMS


class NmsResult(NamedTuple):
    """Indices of the kept boxes, by decreasing score, padded with -1.

    Attributes:
      indices: ``(max_output,)`` int32 indices into the input boxes (-1 = padding).
      valid: ``(max_output,)`` bool, False for padding.
    """

    indices: jax.Array
    valid: jax.Array


def _greedy_nms(
    iou: jax.Array, scores: jax.Array, score_valid: jax.Array, iou_threshold: float, max_output: int
) -> NmsResult:
    n = scores.shape[0]
    order = jnp.argsort(-jnp.where(score_valid, scores, -jnp.inf), stable=True)
    iou_sorted = iou[order][:, order]
    valid_sorted = score_valid[order]

    def body(i: jax.Array, keep: jax.Array) -> jax.Array:
        suppressed = jnp.any(keep & (iou_sorted[i] > iou_threshold))
        return keep.at[i].set(valid_sorted[i] & ~suppressed)

    keep = jax.lax.fori_loop(0, n, body, jnp.zeros((n,), bool))
    # Stable partition: kept boxes (in score order) first.
    rank = jnp.argsort(~keep, stable=True)[:max_output]
    kept = keep[rank]
    if max_output > n:
        pad = max_output - n
        rank = jnp.concatenate([rank, jnp.zeros((pad,), rank.dtype)])
        kept = jnp.concatenate([kept, jnp.zeros((pad,), bool)])
    return NmsResult(jnp.where(kept, order[rank], -1).astype(jnp.int32), kept)


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float = 0.5,
    max_output: int = 100,
    score_threshold: float = -jnp.inf,
) -> NmsResult:
    """Greedy non-maximum suppression with a fixed output size (jit-able, vmap-able).

    Boxes are visited by decreasing score (ties: lower index first); a box is kept when
    its score exceeds ``score_threshold`` and its IoU with every already kept box is
    ``<= iou_threshold``.

    Args:
      boxes: ``(n, 4)``.
      scores: ``(n,)``.
      iou_threshold: suppression threshold.
      max_output: number of returned slots (static).
      score_threshold: boxes scoring at or below it are never kept.
    """
    _check_boxes(boxes, "boxes")
    if scores.shape != boxes.shape[:1]:
        raise BoxError(f"scores must have shape {boxes.shape[:1]}, got {scores.shape}")
    return _greedy_nms(pairwise_iou(boxes, boxes), scores, scores > score_threshold, iou_threshold, max_output)


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    labels: jax.Array,
    iou_threshold: float = 0.5,
    max_output: int = 100,
    score_threshold: float = -jnp.inf,
) -> NmsResult:
    """Per-class greedy NMS: boxes only suppress boxes of the same label (jit-able).

    Args are those of :func:`nms` plus ``labels`` ``(n,)`` int class ids; the result
    interleaves classes by decreasing score.
    """
    _check_boxes(boxes, "boxes")
    if scores.shape != boxes.shape[:1] or labels.shape != boxes.shape[:1]:
        raise BoxError(f"scores and labels must have shape {boxes.shape[:1]}, got {scores.shape}, {labels.shape}")
    same = labels[:, None] == labels[None, :]
    iou = jnp.where(same, pairwise_iou(boxes, boxes), 0.0)
    return _greedy_nms(iou, scores, scores > score_threshold, iou_threshold, max_output)
