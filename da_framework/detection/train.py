"""Training and evaluation of the centre-point detector.

:func:`make_detection_step` returns a pure ``step(state, batch, align_source, align_target,
key) -> (state, metrics)`` to be jitted once (the detection counterpart of
:func:`da_framework.train.step.make_train_step`).  ``batch`` holds labelled images
(``"image"``, ``"boxes"``, ``"box_mask"``); every labelled box is class 0 (single-category
domains).  With ``align_weight > 0`` the step also adds

    align_weight * MK-MMD^2(pooled features(align_source), pooled features(align_target))

(:func:`da_framework.losses.mmd.mk_mmd`, DAN: Long et al., ICML 2015), the feature
alignment between e.g. bird images and person images while fine-tuning the person
detector; with 0 the two alignment batches are not used (pass the labelled images).

Augmentation (inside the step, from its key): random horizontal flips of images and boxes.

:func:`fit` runs a whole training (optionally from given parameters: fine-tuning) and
:func:`evaluate_ap` the VOC AP of a detector on a split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from da_framework.data.domain import ArraySource, batch_iterator
from da_framework.detection.model import CenterPointDetector, decode_batch, detection_loss, encode_batch
from da_framework.detection.voc_eval import ImageDetections, ImageGroundTruth, evaluate_detections
from da_framework.errors import UserError
from da_framework.losses.mmd import mk_mmd
from da_framework.train.finite import check_finite, first_bad_step
from da_framework.train.optimizers import build_optimizer

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class DetectorState:
    """``step`` (int32), ``params`` (the detector's) and the optax ``opt_state``."""

    step: jax.Array
    params: Any
    opt_state: optax.OptState


def init_detector(key: jax.Array, model: CenterPointDetector, image_shape: tuple[int, int, int]) -> Any:
    """Initial parameters of ``model`` for images of ``image_shape`` (H, W, C)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def init_state(params: Any, tx: optax.GradientTransformation) -> DetectorState:
    """A fresh train state (step 0) around ``params``."""
    return DetectorState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def grid_size(model: CenterPointDetector, params: Any, image_shape: tuple[int, int, int]) -> int:
    """Side G of the output grid of ``model`` on images of ``image_shape``."""
    out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((1, *image_shape))), params)
    return int(out[0].heatmap.shape[1])


def random_flip(key: jax.Array, images: jax.Array, boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flips each image (and its normalised boxes) horizontally with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
    flipped = jnp.stack([boxes[..., 0], 1 - boxes[..., 3], boxes[..., 2], 1 - boxes[..., 1]], -1)
    return images, jnp.where(flip[:, None, None], flipped, boxes)


def make_detection_step(
    model: CenterPointDetector,
    tx: optax.GradientTransformation,
    grid: int,
    align_weight: float = 0.0,
    augment: bool = True,
) -> Callable[[DetectorState, Batch, jax.Array, jax.Array, jax.Array], tuple[DetectorState, Metrics]]:
    """Builds the pure detection train step (see module doc).

    Args:
      model: the detector.
      tx: the optimiser over the detector's parameters.
      grid: output grid side (:func:`grid_size`).
      align_weight: weight of the MK-MMD feature-alignment term (0: off).
      augment: random horizontal flips.
    """
    if align_weight < 0:
        raise UserError(f"align_weight must be >= 0, got {align_weight}")

    def loss_fn(params, batch, align_source, align_target, key):
        images, boxes = batch["image"], batch["boxes"]
        if augment:
            images, boxes = random_flip(key, images, boxes)
        labels = jnp.zeros(boxes.shape[:2], jnp.int32)
        targets = encode_batch(boxes, labels, batch["box_mask"], grid, model.num_classes)
        outputs, _ = model.apply({"params": params}, images, train=True)
        total, parts = detection_loss(outputs, targets)
        if align_weight > 0:
            n = align_source.shape[0]
            _, feats = model.apply({"params": params}, jnp.concatenate([align_source, align_target]), train=True)
            parts["align"] = mk_mmd(feats[:n], feats[n:])
            total = total + align_weight * parts["align"]
        return total, parts

    def step(state: DetectorState, batch: Batch, align_source: jax.Array, align_target: jax.Array, key: jax.Array):
        (total, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, align_source, align_target, key
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        metrics = {"loss": total, "grad_norm": optax.global_norm(grads), **{f"loss/{k}": v for k, v in parts.items()}}
        return new, metrics

    return step


def make_optimizer(learning_rate: float, steps: int, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """The detector's optimiser: AdamW, 5% linear warm-up then cosine decay to 0, gradient norm clipped at 10."""
    return build_optimizer(
        "adamw", learning_rate, schedule="warmup_cosine", steps=steps, weight_decay=weight_decay, grad_clip=10.0
    )


@functools.lru_cache(maxsize=16)
def _jitted_step(
    model: CenterPointDetector, learning_rate: float, steps: int, grid: int, align_weight: float
) -> Callable:
    """The jitted step for these settings, built once (so repeated fits compile once).

    It also carries the first step whose loss was not finite (:func:`first_bad_step`)."""
    raw = make_detection_step(model, make_optimizer(learning_rate, steps), grid, align_weight)

    def step(state: DetectorState, batch: Batch, xs: jax.Array, xt: jax.Array, key: jax.Array, first_bad: jax.Array):
        new, metrics = raw(state, batch, xs, xt, key)
        return new, metrics, first_bad_step(first_bad, new.step, {"loss": metrics["loss"]})

    return jax.jit(step)


def fit(
    model: CenterPointDetector,
    train: ArraySource,
    *,
    steps: int,
    seed: int,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    init_params: Any | None = None,
    align_weight: float = 0.0,
    align_source: ArraySource | None = None,
    align_target: ArraySource | None = None,
) -> Any:
    """Trains ``model`` on the labelled ``train`` images; returns the final parameters.

    Args:
      model: the detector.
      train: labelled images (``"image"``, ``"boxes"``, ``"box_mask"``).
      steps: optimisation steps.
      seed: seed of initialisation, data order and augmentation.
      batch_size: images per step (capped at ``len(train)``).
      learning_rate: peak learning rate.
      init_params: start from these (fine-tuning) instead of a fresh initialisation.
      align_weight: MK-MMD weight between ``align_source`` and ``align_target`` images.
      align_source, align_target: image pools of the alignment term (needed when
        ``align_weight > 0``), batched like ``train``.
    """
    if steps <= 0:
        raise UserError(f"steps must be positive, got {steps}")
    if align_weight > 0 and (align_source is None or align_target is None):
        raise UserError("align_weight > 0 needs align_source and align_target image pools")
    key = jax.random.PRNGKey(seed)
    k_init, k_steps = jax.random.split(key)
    shape = tuple(train.arrays["image"].shape[1:])
    params = init_params if init_params is not None else init_detector(k_init, model, shape)  # type: ignore[arg-type]
    tx = make_optimizer(learning_rate, steps)
    state = init_state(params, tx)
    bs = min(batch_size, len(train))
    grid = grid_size(model, params, shape)  # type: ignore[arg-type]
    step = _jitted_step(model, learning_rate, steps, grid, align_weight)
    fields = ("image", "boxes", "box_mask")
    batches = batch_iterator(train, bs, seed, fields=fields)
    if align_weight > 0:
        assert align_source is not None and align_target is not None
        a_bs = min(bs, len(align_source), len(align_target))
        src_it = batch_iterator(align_source, a_bs, seed + 1, fields=("image",))
        tgt_it = batch_iterator(align_target, a_bs, seed + 2, fields=("image",))
    first_bad = jnp.zeros((), jnp.int32)
    for i in range(steps):
        batch = next(batches)
        if align_weight > 0:
            xs, xt = next(src_it)["image"], next(tgt_it)["image"]
        else:
            xs = xt = batch["image"][:2]
        state, metrics, first_bad = step(state, batch, xs, xt, jax.random.fold_in(k_steps, i), first_bad)
    loss, bad_step = jax.device_get((metrics["loss"], first_bad))
    check_finite(steps, {"loss": float(loss)}, learning_rate, int(bad_step))
    return state.params


def predict(
    model: CenterPointDetector, params: Any, images: np.ndarray, top_k: int = 20, batch_size: int = 128
) -> list[ImageDetections]:
    """The ``top_k`` detections of each image (class ids, scores in [0, 1])."""

    @jax.jit
    def run(p, x):
        outputs, _ = model.apply({"params": p}, x)
        return decode_batch(outputs, top_k)

    out: list[ImageDetections] = []
    for start in range(0, len(images), batch_size):
        det = jax.device_get(run(params, jnp.asarray(images[start : start + batch_size])))
        out += [ImageDetections(b, s, l) for b, s, l in zip(det.boxes, det.scores, det.labels)]
    return out


def ground_truth(split: ArraySource) -> list[ImageGroundTruth]:
    """Per-image ground truth (class 0 boxes, difficult flags) of a detection split."""
    a = split.arrays
    return [
        ImageGroundTruth(b[m], np.zeros(int(m.sum()), np.int64), d[m])
        for b, m, d in zip(a["boxes"], a["box_mask"].astype(bool), a["is_difficult"].astype(bool))
    ]


def evaluate_ap(model: CenterPointDetector, params: Any, split: ArraySource, top_k: int = 20) -> dict[str, float]:
    """VOC AP@0.5 of the single-class detector on ``split``: all-point and 11-point."""
    dets, gts = predict(model, params, split.arrays["image"], top_k), ground_truth(split)
    return {
        "ap50": float(evaluate_detections(dets, gts, 1)["ap"][0]),  # type: ignore[index]
        "ap50_voc07": float(evaluate_detections(dets, gts, 1, use_07_metric=True)["ap"][0]),  # type: ignore[index]
    }
