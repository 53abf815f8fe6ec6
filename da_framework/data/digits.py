"""The embedded default benchmark: shifted copies of scikit-learn's handwritten digits.

Everything here is built deterministically, offline, from the 1,797 8x8 images of
``sklearn.datasets.load_digits`` (UCI optical recognition of handwritten digits), which
ship inside the scikit-learn wheel.  No download and no extra files are needed.

How every domain is made (all steps NumPy/SciPy, fixed seeds):

1. Pixels (0..16) are scaled to [0, 1], each image is upsampled 8x8 -> 12x12 with
   bilinear interpolation (``scipy.ndimage.zoom``, order 1) and zero-padded by 2 pixels to a
   16x16x1 canvas, so that rotations and shifts do not cut the strokes.
2. The images are permuted with ``numpy.random.default_rng(0)`` and cut in two disjoint
   halves: the *source pool* (first 899) and the *target pool* (last 898).  Source and
   target domains therefore never share an image.
3. Each pool is cut 60/20/20 into ``train``/``val``/``test`` splits in permutation order.
4. A named shift is applied to every image of the pool (per-image randomness drawn from
   ``default_rng(1000 + shift index)``, so a domain is identical on every machine):

   ==========  =======================================================================
   ``clean``   no change (the target pool without shift: a no-shift sanity check)
   ``rotate``  rotation by an angle drawn uniformly from +-[30, 45] degrees (bilinear)
   ``invert``  colour inversion ``x -> 1 - x`` (white strokes become dark)
   ``blur``    Gaussian blur with sigma = 1.0 pixel
   ``scale``   shrink about the centre by a factor drawn uniformly from [0.55, 0.7]
   ``noise``   additive Gaussian noise (std 0.3) plus 10% salt-and-pepper pixels,
               clipped to [0, 1]
   ==========  =======================================================================

The domain ``digits/source`` is the unshifted source pool; ``digits/<shift>`` is the
target pool under ``<shift>``.  The standard pairs are ``digits/source -> digits/<shift>``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from da_framework.data.domain import ArraySource, Domain
from da_framework.data.registry import register_domain
from da_framework.errors import UserError

IMAGE_SIZE = 16
_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
_CLASS_NAMES = tuple(str(d) for d in range(10))


@functools.cache
def _base_images() -> tuple[np.ndarray, np.ndarray]:
    """Returns (images (N, 16, 16) float32 in [0,1], labels (N,) int32), permuted."""
    from sklearn.datasets import load_digits

    data = load_digits()
    raw = data.images.astype(np.float64) / 16.0
    up = np.stack([ndimage.zoom(im, 1.5, order=1) for im in raw])  # 8x8 -> 12x12
    up = np.clip(up, 0.0, 1.0)
    pad = (IMAGE_SIZE - up.shape[1]) // 2
    canvas = np.pad(up, ((0, 0), (pad, pad), (pad, pad)))
    order = np.random.default_rng(0).permutation(len(canvas))
    return canvas[order].astype(np.float32), data.target[order].astype(np.int32)


def _rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(30.0, 45.0, len(images)) * rng.choice([-1.0, 1.0], len(images))
    return np.stack(
        [ndimage.rotate(im, a, reshape=False, order=1, mode="constant") for im, a in zip(images, angles)]
    )


def _invert(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    return 1.0 - images


def _blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    return np.stack([ndimage.gaussian_filter(im, sigma=1.0, mode="constant") for im in images])


def _scale(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factors = rng.uniform(0.55, 0.7, len(images))
    centre = (IMAGE_SIZE - 1) / 2.0
    out = []
    for im, f in zip(images, factors):
        # output pixel p samples input at centre + (p - centre) / f: a shrink about the centre.
        matrix = np.eye(2) / f
        offset = centre - matrix @ np.array([centre, centre])
        out.append(ndimage.affine_transform(im, matrix, offset=offset, order=1, mode="constant"))
    return np.stack(out)


def _noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = images + rng.normal(0.0, 0.3, images.shape)
    salt = rng.random(images.shape)
    noisy = np.where(salt < 0.05, 0.0, np.where(salt > 0.95, 1.0, noisy))
    return noisy


SHIFTS: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], str]] = {
    "clean": (lambda x, rng: x, "target pool, no shift (sanity check)"),
    "rotate": (_rotate, "rotated by +-[30, 45] degrees"),
    "invert": (_invert, "colour-inverted (1 - x)"),
    "blur": (_blur, "Gaussian blur, sigma 1 px"),
    "scale": (_scale, "shrunk about the centre by [0.55, 0.7]"),
    "noise": (_noise, "Gaussian noise (0.3) + 10% salt-and-pepper"),
}


def _split(images: np.ndarray, labels: np.ndarray) -> dict[str, ArraySource]:
    n = len(images)
    n_train = int(round(_SPLIT_FRACTIONS[0] * n))
    n_val = int(round(_SPLIT_FRACTIONS[1] * n))
    cuts = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    return {
        name: ArraySource({"image": images[a:b, :, :, None], "label": labels[a:b]})
        for name, (a, b) in cuts.items()
    }


@functools.cache
def make_digits_domain(shift: str | None) -> Domain:
    """Builds ``digits/source`` (``shift=None``) or the target pool under ``shift``.

    Args:
      shift: one of :data:`SHIFTS`, or None for the unshifted source pool.

    Returns:
      a :class:`Domain` with ``train``/``val``/``test`` splits of 16x16x1 float32 images.
    """
    images, labels = _base_images()
    half = (len(images) + 1) // 2
    if shift is None:
        pool_x, pool_y, name, desc = images[:half], labels[:half], "digits/source", "source pool, unshifted"
    else:
        if shift not in SHIFTS:
            raise UserError(f"unknown digits shift {shift!r}; valid shifts: {', '.join(SHIFTS)}")
        fn, desc = SHIFTS[shift]
        rng = np.random.default_rng(1000 + list(SHIFTS).index(shift))
        pool_x = np.clip(fn(images[half:].astype(np.float64), rng), 0.0, 1.0).astype(np.float32)
        pool_y, name = labels[half:], f"digits/{shift}"
    return Domain(
        name=name,
        splits=_split(pool_x, pool_y),
        num_classes=10,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
        modality="image",
        description=f"sklearn digits 16x16: {desc}",
        class_names=_CLASS_NAMES,
    )


def pair_config(shift: str) -> dict[str, Any]:
    """Experiment-config overrides pairing ``digits/source`` with ``digits/<shift>``.

    The optimisation protocol is ExperimentConfig's default (the standard DANN protocol:
    SGD, Nesterov momentum 0.9, lr 0.01 decayed as 1/(1+10p)^0.75, no bottleneck, 500 steps
    of 64+64 images); the LeNet is narrowed to 16/32 channels and 256 features because the
    images are 16x16.

    Raises:
      ValueError: for an unknown shift (the message lists the valid ones).
    """
    if shift not in SHIFTS:
        raise UserError(f"unknown digits shift {shift!r}; valid: {', '.join(sorted(SHIFTS))}")
    return {
        "source": "digits/source",
        "target": f"digits/{shift}",
        "model": "lenet",
        "model_kwargs": {"channels": (16, 32), "dense": 256},
    }


def _register_all() -> None:
    def factory_for(shift: str | None) -> Callable[..., Domain]:
        def factory(data_dir: str | None = None) -> Domain:
            del data_dir  # embedded: nothing to read from disk
            return make_digits_domain(shift)

        return factory

    register_domain("digits/source", description="sklearn digits 16x16, source pool, unshifted")(
        factory_for(None)
    )
    for shift, (_, desc) in SHIFTS.items():
        register_domain(f"digits/{shift}", description=f"sklearn digits 16x16, target pool, {desc}")(
            factory_for(shift)
        )


_register_all()
