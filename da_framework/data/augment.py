"""Keyed, on-device data augmentation and robustness perturbations in pure JAX.

Every image function has the signature ``fn(key, images, ...) -> images`` on a batch of
shape (N, H, W, C) (C = 1 or 3, values in [0, 1]), draws independent randomness per example
from ``key`` alone, preserves shape and dtype, and is safe under ``jax.jit`` and ``jax.vmap``;
so a training step can augment its batch on device and a run stays reproducible from its
seed.  Image ops come from dm-pix where it has them (flip, crop, rotate, blur, brightness,
contrast, saturation).

* geometric / photometric: :func:`random_flip`, :func:`random_crop`, :func:`random_rotation`,
  :func:`gaussian_noise`, :func:`random_blur`, :func:`color_jitter`, :func:`jpeg_quality`
  (8x8 block-DCT quantisation with the JPEG luminance table, Wallace, CACM 1991);
* robustness perturbations: :func:`missing_values`, :func:`duplicated_values`,
  :func:`outlier_values`, :func:`cutout`;
* label noise on source labels: :func:`symmetric_label_noise`,
  :func:`apply_transition_matrix` with :func:`symmetric_transition_matrix` or
  :func:`pair_flip_transition_matrix` (class-conditional noise, Patrini et al., CVPR 2017);
* compositions: :func:`weak_augment` (flip + pad-and-crop, FixMatch's weak view) and
  :func:`strong_augment` (RandAugment-like: ``num_ops`` ops drawn at random per example,
  Cubuk et al., CVPR-W 2020, followed by Cutout as in FixMatch, Sohn et al., NeurIPS 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

ImageOp = Callable[[jax.Array, jax.Array], jax.Array]


class AugmentError(ValueError):
    """Raised for images or labels of the wrong shape, or out-of-range parameters."""


# ------------------------------------------------------------------------------ helpers


def _check_images(images: jax.Array, fn: str) -> None:
    if images.ndim != 4:
        raise AugmentError(
            f"{fn}: expected a batch of images (N, H, W, C), got shape {images.shape}; add the batch/channel axes"
        )
    if images.shape[-1] not in (1, 3):
        raise AugmentError(f"{fn}: expected 1 or 3 channels (channels last), got shape {images.shape}")


def _check_rate(rate: float, fn: str, name: str = "rate") -> None:
    if isinstance(rate, (int, float)) and not 0.0 <= rate <= 1.0:
        raise AugmentError(f"{fn}: {name} must be in [0, 1], got {rate}")


def _per_example(op: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, images: jax.Array) -> jax.Array:
    """Applies ``op(key_i, image_i)`` to every example with its own key, in float32, keeping dtype."""
    keys = jax.random.split(key, images.shape[0])
    out = jax.vmap(op)(keys, images.astype(jnp.float32))
    return out.astype(images.dtype)


# ------------------------------------------------------------------- geometric/photometric


def flip_left_right(images: jax.Array) -> jax.Array:
    """Mirrors every image horizontally (deterministic; its own inverse)."""
    _check_images(images, "flip_left_right")
    return pix.flip_left_right(images)


def random_flip(key: jax.Array, images: jax.Array, p: float = 0.5, vertical: bool = False) -> jax.Array:
    """Mirrors each image left-right (or up-down) independently with probability ``p``."""
    _check_images(images, "random_flip")
    _check_rate(p, "random_flip", "p")
    flip = pix.flip_up_down if vertical else pix.flip_left_right
    do = jax.random.bernoulli(key, p, (images.shape[0],))
    return jnp.where(do[:, None, None, None], flip(images), images)


def random_crop(key: jax.Array, images: jax.Array, pad: int = 2, mode: str = "reflect") -> jax.Array:
    """Pads each image by ``pad`` pixels and crops a random window of the original size (translation)."""
    _check_images(images, "random_crop")
    if pad < 0:
        raise AugmentError(f"random_crop: pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    return _per_example(lambda k, im: pix.random_crop(k, im, (h, w, c)), key, padded).astype(images.dtype)


def random_rotation(key: jax.Array, images: jax.Array, max_degrees: float = 15.0, order: int = 1,
                    mode: str = "nearest", cval: float = 0.0) -> jax.Array:
    """Rotates each image about its centre by an angle uniform in [-max_degrees, max_degrees].

    ``order`` 1 is bilinear, 0 nearest; ``mode="nearest"`` fills the corners with the edge
    pixels, ``mode="constant"`` with ``cval`` (torchvision's ``RandomRotation(d)``: nearest,
    fill 0, i.e. ``order=0, mode="constant"``).
    """
    _check_images(images, "random_rotation")
    if order not in (0, 1):
        raise AugmentError(f"random_rotation: order must be 0 (nearest) or 1 (bilinear), got {order!r}")
    if mode not in ("nearest", "constant", "wrap", "mirror", "reflect"):
        raise AugmentError(f"random_rotation: unknown mode {mode!r}; valid: nearest, constant, wrap, mirror, reflect")
    limit = math.radians(max_degrees)

    def op(k: jax.Array, im: jax.Array) -> jax.Array:
        angle = jax.random.uniform(k, (), jnp.float32, -limit, limit)
        return pix.rotate(im, angle, order=order, mode=mode, cval=cval)

    return _per_example(op, key, images)


def gaussian_noise(key: jax.Array, images: jax.Array, std: float = 0.05, clip: bool = True) -> jax.Array:
    """Adds i.i.d. N(0, std^2) noise to every value (clipped to [0, 1] when ``clip``)."""
    _check_images(images, "gaussian_noise")
    out = images.astype(jnp.float32) + std * jax.random.normal(key, images.shape, jnp.float32)
    return (jnp.clip(out, 0.0, 1.0) if clip else out).astype(images.dtype)


def random_blur(
    key: jax.Array, images: jax.Array, sigma: tuple[float, float] = (0.1, 1.0), kernel_size: int = 5
) -> jax.Array:
    """Gaussian blur of each image with sigma uniform in ``sigma`` (dm-pix ``gaussian_blur``)."""
    _check_images(images, "random_blur")
    lo, hi = sigma

    def op(k: jax.Array, im: jax.Array) -> jax.Array:
        return pix.gaussian_blur(im, jax.random.uniform(k, (), jnp.float32, lo, hi), kernel_size)

    return _per_example(op, key, images)


def color_jitter(
    key: jax.Array, images: jax.Array, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2
) -> jax.Array:
    """Random brightness shift, contrast and (3-channel only) saturation factors per image.

    Brightness adds delta ~ U(-b, b); contrast and saturation scale by U(1 - c, 1 + c); the
    result is clipped to [0, 1].  Saturation is skipped for 1-channel images.
    """
    _check_images(images, "color_jitter")
    rgb = images.shape[-1] == 3

    def op(k: jax.Array, im: jax.Array) -> jax.Array:
        kb, kc, ks = jax.random.split(k, 3)
        im = pix.adjust_brightness(im, jax.random.uniform(kb, (), jnp.float32, -brightness, brightness))
        im = pix.adjust_contrast(im, jax.random.uniform(kc, (), jnp.float32, 1 - contrast, 1 + contrast))
        if rgb:
            factor = jax.random.uniform(ks, (), jnp.float32, 1 - saturation, 1 + saturation)
            im = pix.adjust_saturation(jnp.clip(im, 0, 1), factor)
        return jnp.clip(im, 0.0, 1.0)

    return _per_example(op, key, images)


_JPEG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float32,
)


def dct_matrix(n: int = 8) -> np.ndarray:
    """The orthonormal DCT-II matrix D (n, n): the DCT of a vector v is D v, its inverse D^T."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def jpeg_quantization_table(quality: jax.Array | float) -> jax.Array:
    """The 8x8 JPEG luminance quantisation table scaled to ``quality`` in [1, 100] (IJG formula)."""
    q = jnp.clip(jnp.asarray(quality, jnp.float32), 1.0, 100.0)
    scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    return jnp.clip(jnp.floor((_JPEG_LUMA * scale + 50.0) / 100.0), 1.0, 255.0)


def jpeg_compress(images: jax.Array, quality: jax.Array | float) -> jax.Array:
    """JPEG-like quality loss: 8x8 block DCT, quantise with the scaled luminance table, invert.

    Each channel is coded like JPEG's luminance plane (no colour transform or chroma
    subsampling); H and W are edge-padded to multiples of 8 and cropped back.

    Args:
      images: (N, H, W, C) values in [0, 1].
      quality: scalar or (N,) JPEG quality in [1, 100] (100: almost lossless).

    Returns:
      the decoded images, clipped to [0, 1], same shape and dtype.
    """
    _check_images(images, "jpeg_compress")
    n, h, w, c = images.shape
    ph, pw = (-h) % 8, (-w) % 8
    x = jnp.pad(images.astype(jnp.float32), ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") * 255.0 - 128.0
    hb, wb = (h + ph) // 8, (w + pw) // 8
    blocks = x.reshape(n, hb, 8, wb, 8, c)
    d = jnp.asarray(dct_matrix(8))
    coeff = jnp.einsum("ui,nhiwjc,vj->nhuwvc", d, blocks, d)
    table = jax.vmap(jpeg_quantization_table)(jnp.broadcast_to(jnp.asarray(quality, jnp.float32), (n,)))
    table = table[:, None, :, None, :, None]
    coeff = jnp.round(coeff / table) * table
    out = jnp.einsum("ui,nhuwvc,vj->nhiwjc", d, coeff, d).reshape(n, h + ph, w + pw, c)[:, :h, :w]
    return jnp.clip((out + 128.0) / 255.0, 0.0, 1.0).astype(images.dtype)


def jpeg_quality(key: jax.Array, images: jax.Array, quality: tuple[float, float] = (20.0, 80.0)) -> jax.Array:
    """JPEG-like compression with a quality uniform in ``quality`` per image (:func:`jpeg_compress`)."""
    _check_images(images, "jpeg_quality")
    lo, hi = quality
    return jpeg_compress(images, jax.random.uniform(key, (images.shape[0],), jnp.float32, lo, hi))


# ----------------------------------------------------------------- robustness perturbations


def _pixel_mask(key: jax.Array, images: jax.Array, rate: float) -> jax.Array:
    n, h, w, _ = images.shape
    return jax.random.bernoulli(key, rate, (n, h, w, 1))


def missing_values(key: jax.Array, images: jax.Array, rate: float = 0.1, fill: float = 0.0) -> jax.Array:
    """Sets each pixel (all its channels) to ``fill`` independently with probability ``rate``."""
    _check_images(images, "missing_values")
    _check_rate(rate, "missing_values")
    return jnp.where(_pixel_mask(key, images, rate), jnp.asarray(fill, images.dtype), images)


def duplicated_values(key: jax.Array, images: jax.Array, rate: float = 0.1) -> jax.Array:
    """Replaces each pixel with probability ``rate`` by a copy of a uniformly drawn pixel of the same image."""
    _check_images(images, "duplicated_values")
    _check_rate(rate, "duplicated_values")
    n, h, w, c = images.shape
    k_mask, k_src = jax.random.split(key)
    flat = images.reshape(n, h * w, c)
    src = jax.random.randint(k_src, (n, h * w), 0, h * w)
    copies = jnp.take_along_axis(flat, src[:, :, None], axis=1).reshape(images.shape)
    return jnp.where(_pixel_mask(k_mask, images, rate), copies, images)


def outlier_values(key: jax.Array, images: jax.Array, rate: float = 0.05, magnitude: float = 5.0) -> jax.Array:
    """Replaces each value with probability ``rate`` by an outlier mean +- ``magnitude`` * std of its image.

    The sign is random; values are not clipped (outliers leave the data range on purpose).
    """
    _check_images(images, "outlier_values")
    _check_rate(rate, "outlier_values")
    k_mask, k_sign = jax.random.split(key)
    x = images.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True) + 1e-6
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, x.shape), 1.0, -1.0)
    mask = jax.random.bernoulli(k_mask, rate, x.shape)
    return jnp.where(mask, mean + sign * magnitude * std, x).astype(images.dtype)


def cutout(key: jax.Array, images: jax.Array, size: int = 4, fill: float = 0.5) -> jax.Array:
    """Fills one random ``size`` x ``size`` square per image with ``fill`` (DeVries & Taylor, 2017)."""
    _check_images(images, "cutout")
    n, h, w, _ = images.shape
    k_y, k_x = jax.random.split(key)
    cy = jax.random.randint(k_y, (n, 1, 1, 1), 0, h)
    cx = jax.random.randint(k_x, (n, 1, 1, 1), 0, w)
    yy = jnp.arange(h)[None, :, None, None]
    xx = jnp.arange(w)[None, None, :, None]
    inside = (jnp.abs(yy - cy) <= size // 2) & (jnp.abs(xx - cx) <= size // 2)
    return jnp.where(inside, jnp.asarray(fill, images.dtype), images)


# ------------------------------------------------------------------------------ label noise


def symmetric_transition_matrix(num_classes: int, rate: float) -> jax.Array:
    """T[i, j] = P(noisy j | clean i): 1 - rate on the diagonal, rate / (k - 1) elsewhere."""
    _check_rate(rate, "symmetric_transition_matrix")
    if num_classes < 2:
        raise AugmentError(f"symmetric_transition_matrix: needs at least 2 classes, got {num_classes}")
    off = rate / (num_classes - 1)
    return jnp.full((num_classes, num_classes), off, jnp.float32) + (1.0 - rate - off) * jnp.eye(num_classes)


def pair_flip_transition_matrix(num_classes: int, rate: float) -> jax.Array:
    """Class-conditional 'pair flip' noise: class i becomes class (i + 1) mod k with probability ``rate``."""
    _check_rate(rate, "pair_flip_transition_matrix")
    if num_classes < 2:
        raise AugmentError(f"pair_flip_transition_matrix: needs at least 2 classes, got {num_classes}")
    eye = jnp.eye(num_classes, dtype=jnp.float32)
    return (1.0 - rate) * eye + rate * jnp.roll(eye, 1, axis=1)


def check_transition_matrix(matrix: jax.Array | np.ndarray) -> None:
    """Checks a concrete (k, k) transition matrix: non-negative rows that sum to 1."""
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise AugmentError(f"transition matrix must be square (k, k), got shape {m.shape}")
    if np.any(m < 0) or not np.allclose(m.sum(1), 1.0, atol=1e-5):
        raise AugmentError("transition matrix rows must be non-negative and sum to 1 (T[i, j] = P(noisy j | clean i))")


def apply_transition_matrix(key: jax.Array, labels: jax.Array, matrix: jax.Array) -> jax.Array:
    """Draws each noisy label from row ``matrix[label]`` (class-conditional label noise).

    Args:
      key: PRNG key.
      labels: (n,) integer clean labels in [0, k).
      matrix: (k, k) row-stochastic T[i, j] = P(noisy j | clean i); checked when concrete.

    Returns:
      (n,) noisy labels, same dtype.
    """
    if labels.ndim != 1:
        raise AugmentError(f"apply_transition_matrix: labels must be 1-D (n,), got shape {labels.shape}")
    try:
        concrete = np.asarray(matrix)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        concrete = None  # traced under jit: checked by the caller
    if concrete is not None:
        check_transition_matrix(concrete)
    logp = jnp.log(jnp.asarray(matrix, jnp.float32)[labels])
    return jax.random.categorical(key, logp, axis=-1).astype(labels.dtype)


def symmetric_label_noise(key: jax.Array, labels: jax.Array, num_classes: int, rate: float) -> jax.Array:
    """Replaces each label with probability ``rate`` by one of the other k - 1 classes, uniformly."""
    return apply_transition_matrix(key, labels, symmetric_transition_matrix(num_classes, rate))


# ------------------------------------------------------------------------------ compositions


def weak_augment(key: jax.Array, images: jax.Array, pad: int = 2, flip: bool = True) -> jax.Array:
    """FixMatch's weak view: random horizontal flip (if ``flip``) and pad-and-crop by ``pad`` pixels."""
    _check_images(images, "weak_augment")
    k_flip, k_crop = jax.random.split(key)
    if flip:
        images = random_flip(k_flip, images)
    return random_crop(k_crop, images, pad)


def _strong_ops(rgb: bool, magnitude: float) -> list[ImageOp]:
    """Batch ops ``(key, images) -> images`` of the RandAugment-like policy at strength ``magnitude``."""
    m = magnitude
    return [
        lambda k, x: x,
        lambda k, x: random_rotation(k, x, 30.0 * m),
        lambda k, x: random_crop(k, x, max(1, round(4 * m))),
        lambda k, x: color_jitter(k, x, 0.4 * m, 0.6 * m, 0.6 * m),
        lambda k, x: random_blur(k, x, (0.1, 0.1 + 1.5 * m)),
        lambda k, x: gaussian_noise(k, x, 0.1 * m),
        lambda k, x: jpeg_quality(k, x, (100.0 - 90.0 * m, 100.0 - 60.0 * m)),
        lambda k, x: jnp.where(x > 1.0 - 0.5 * m, 1.0 - x, x),  # solarize
        (lambda k, x: x[..., ::-1]) if rgb else (lambda k, x: 1.0 - x),  # channel swap / invert
    ]


@partial(jax.jit, static_argnames=("num_ops", "magnitude", "cutout_size"))
def strong_augment(
    key: jax.Array, images: jax.Array, num_ops: int = 2, magnitude: float = 0.5, cutout_size: int | None = None
) -> jax.Array:
    """RandAugment-like strong view: ``num_ops`` ops drawn uniformly per example, then Cutout.

    Ops: identity, rotation, translation, colour jitter, blur, noise, JPEG, solarize, invert
    (channel permutation for RGB), each at a strength scaled by ``magnitude`` in [0, 1].  Each
    round computes every op on the batch and keeps, per example, the one it drew (no
    data-dependent control flow, so it compiles once and vectorises).

    Args:
      key: PRNG key.
      images: (N, H, W, C) in [0, 1].
      num_ops: ops applied in sequence to each example.
      magnitude: strength of every op.
      cutout_size: side of the Cutout square (default H // 4; 0 disables it).

    Returns:
      augmented images, same shape and dtype.
    """
    _check_images(images, "strong_augment")
    _check_rate(magnitude, "strong_augment", "magnitude")
    ops = _strong_ops(images.shape[-1] == 3, magnitude)
    n = images.shape[0]
    k_ops, k_cut = jax.random.split(key)
    x = images.astype(jnp.float32)
    for k_round in jax.random.split(k_ops, num_ops):
        keys = jax.random.split(k_round, len(ops) + 1)
        choice = jax.random.randint(keys[0], (n,), 0, len(ops))
        candidates = jnp.stack([op(k, x).astype(jnp.float32) for op, k in zip(ops, keys[1:])])
        x = candidates[choice, jnp.arange(n)]
    size = images.shape[1] // 4 if cutout_size is None else cutout_size
    out = cutout(k_cut, x, size) if size > 0 else x
    return out.astype(images.dtype)
