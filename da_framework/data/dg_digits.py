"""Embedded domain-generalisation environments from scikit-learn's digits: no download needed.

The 1,797 16x16 images of :mod:`da_framework.data.digits` (step 1 of its recipe: scaled,
upsampled, padded, permuted with ``default_rng(0)``) are cut into 6 disjoint environments
and split in/out exactly as DomainBed cuts MNIST (:mod:`da_framework.data.environments`):

* ``rdigits/0`` .. ``rdigits/75``: a small RotatedMNIST.  Environment ``i`` is rotated by
  ``(0, 15, 30, 45, 60, 75)[i]`` degrees (PIL, float images, bicubic, counter-clockwise,
  fill 0), about 300 images each (240 in / 59-60 out).
* ``digits_env/<shift>`` for the six shifts of :data:`da_framework.data.digits.SHIFTS`
  (``clean``, ``rotate``, ``invert``, ``blur``, ``scale``, ``noise``): environment ``i``
  under shift ``i`` (per-image randomness from ``default_rng([seed, 3, i])``), so the
  embedded digit shifts become 6 environments that share no image.

10 classes, 16x16x1 float32 in [0, 1].  Both families pair with a held-out environment as
the target, e.g. ``source="rdigits/15,rdigits/30,rdigits/45,rdigits/60,rdigits/75"``,
``target="rdigits/0"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from da_framework.data import digits
from da_framework.data.dg_mnist import ROTATIONS
from da_framework.data.domain import Domain, DomainError
from da_framework.data.environments import environment_domain, environment_indices, rotate_images
from da_framework.data.registry import register_domain

SHIFT_ENVIRONMENTS: tuple[str, ...] = tuple(digits.SHIFTS)
_DIGITS = tuple(str(d) for d in range(10))


def rotated_digits_environment(
    images: np.ndarray, labels: np.ndarray, env_index: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Environment ``env_index`` of :data:`ROTATIONS` cut from a float32 (n, H, W) pool and rotated.

    Returns:
      ``(x, y)``: float32 (m, H, W, 1) clipped to [0, 1] (bicubic overshoots) and int32 labels.
    """
    if not 0 <= env_index < len(ROTATIONS):
        raise DomainError(f"rotated digits have environments 0..{len(ROTATIONS) - 1}, got {env_index}")
    idx = environment_indices(len(images), len(ROTATIONS), seed)[env_index]
    rotated = rotate_images(np.asarray(images, np.float32)[idx], ROTATIONS[env_index], "bicubic")
    return np.clip(rotated, 0.0, 1.0)[..., None], np.asarray(labels)[idx].astype(np.int32)


def shifted_digits_environment(
    images: np.ndarray, labels: np.ndarray, env_index: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Environment ``env_index`` of :data:`SHIFT_ENVIRONMENTS` cut from a float32 (n, H, W) pool, shifted.

    Returns:
      ``(x, y)``: float32 (m, H, W, 1) in [0, 1] and int32 labels.
    """
    if not 0 <= env_index < len(SHIFT_ENVIRONMENTS):
        raise DomainError(f"digit shift environments are 0..{len(SHIFT_ENVIRONMENTS) - 1}, got {env_index}")
    idx = environment_indices(len(images), len(SHIFT_ENVIRONMENTS), seed)[env_index]
    fn, _ = digits.SHIFTS[SHIFT_ENVIRONMENTS[env_index]]
    shifted = fn(np.asarray(images, np.float64)[idx], np.random.default_rng([seed, 3, env_index]))
    return np.clip(shifted, 0.0, 1.0).astype(np.float32)[..., None], np.asarray(labels)[idx].astype(np.int32)


@functools.lru_cache(maxsize=None)
def rdigits_domain(angle: int, seed: int = 0) -> Domain:
    """The embedded rotated-digits environment of ``angle`` degrees; cached."""
    if angle not in ROTATIONS:
        raise DomainError(f"rotated digits angles are {ROTATIONS}, got {angle!r}")
    images, labels = digits._base_images()
    env = ROTATIONS.index(angle)
    x, y = rotated_digits_environment(images, labels, env, seed)
    return environment_domain(f"rdigits/{angle}", x, y, env, 10,
                              f"sklearn digits 16x16 environment {env} of 6, rotated {angle} degrees", seed, _DIGITS)


@functools.lru_cache(maxsize=None)
def digits_env_domain(shift: str, seed: int = 0) -> Domain:
    """The embedded digits environment under ``shift``; cached."""
    if shift not in SHIFT_ENVIRONMENTS:
        raise DomainError(f"digit shift environments are {', '.join(SHIFT_ENVIRONMENTS)}, got {shift!r}")
    images, labels = digits._base_images()
    env = SHIFT_ENVIRONMENTS.index(shift)
    x, y = shifted_digits_environment(images, labels, env, seed)
    return environment_domain(f"digits_env/{shift}", x, y, env, 10,
                              f"sklearn digits 16x16 environment {env} of 6, shift {shift}", seed, _DIGITS)


def _register_all() -> None:
    def factory_for(build: Callable[[], Domain]) -> Callable[..., Domain]:
        def factory(data_dir: str | None = None) -> Domain:
            del data_dir  # embedded: nothing to read from disk
            return build()

        return factory

    for angle in ROTATIONS:
        register_domain(f"rdigits/{angle}", description=f"embedded rotated-digits environment, {angle} degrees "
                        "(DG; 6 disjoint environments)")(factory_for(functools.partial(rdigits_domain, angle)))
    for shift in SHIFT_ENVIRONMENTS:
        register_domain(f"digits_env/{shift}", description=f"embedded digits environment under shift {shift!r} "
                        "(DG; 6 disjoint environments)")(factory_for(functools.partial(digits_env_domain, shift)))


_register_all()
