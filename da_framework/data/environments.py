"""Domain-generalisation environments: one dataset cut into K environments as DomainBed does.

DomainBed (Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021;
github.com/facebookresearch/DomainBed) builds its MNIST environments in
``domainbed/datasets.py`` (``MultipleEnvironmentMNIST``) and splits each environment in
``domainbed/scripts/train.py``.  The same recipe, with explicit NumPy generators:

1. **Environments.** The pool (for MNIST: train then test, 70,000 images) is permuted and
   environment ``i`` of ``K`` takes every K-th example from position ``i``
   (``shuffled[i::K]``, DomainBed's ``original_images[i::len(environments)]``): disjoint,
   equally sized to within one example.  DomainBed permutes with ``torch.randperm`` under
   ``torch.manual_seed(args.seed)``; here ``np.random.default_rng([seed, 0])`` (so the
   members differ from DomainBed's draw, the construction does not).
2. **In/out splits.** Each environment is permuted again (``default_rng([seed, 1, i])``;
   DomainBed: ``np.random.RandomState(seed_hash(trial_seed, env_i))``) and its first
   ``int(0.2 n)`` examples are the *out* split, the rest the *in* split
   (``misc.split_dataset(env, int(len(env) * holdout_fraction))``).  DomainBed trains on the
   in-splits of the training environments, validates on their out-splits (training-domain
   validation) and reports the held-out environment's *in*-split accuracy.  So a domain
   here has ``train`` = in, ``val`` = out and ``test`` = in (the same examples as ``train``:
   the number DomainBed reports when the environment is held out).
3. **Rotation** (:func:`rotate_images`) is PIL's ``Image.rotate`` of the uint8 image,
   counter-clockwise about the image centre, the outside filled with 0, the size kept: what
   ``torchvision.transforms.functional.rotate(x, angle, fill=(0,), ...)`` runs on a PIL
   image.  DomainBed's interpolation was ``resample=Image.BICUBIC`` in its 2020 code (the
   version of the published tables) and is ``InterpolationMode.BILINEAR`` in the current
   ``datasets.py``; ``interpolation`` picks either (default bicubic).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from da_framework.data.domain import ArraySource, Domain, DomainError

HOLDOUT_FRACTION = 0.2
INTERPOLATIONS = ("bicubic", "bilinear")


def environment_indices(n: int, num_envs: int, seed: int = 0) -> list[np.ndarray]:
    """Indices of each environment's examples: a seeded permutation cut as ``perm[i::num_envs]``.

    Args:
      n: size of the pool.
      num_envs: K, the number of environments (1 <= K <= n).
      seed: seed of the permutation (``np.random.default_rng([seed, 0])``).

    Returns:
      K disjoint int64 index arrays covering ``range(n)``; sizes differ by at most one.
    """
    if not 1 <= num_envs <= n:
        raise DomainError(f"cannot cut {n} examples into {num_envs} environments; need 1 <= environments <= examples")
    perm = np.random.default_rng([seed, 0]).permutation(n)
    return [perm[i::num_envs] for i in range(num_envs)]


def holdout_split(n: int, env_index: int, seed: int = 0, holdout_fraction: float = HOLDOUT_FRACTION
                  ) -> tuple[np.ndarray, np.ndarray]:
    """DomainBed's in/out split of one environment of ``n`` examples.

    Args:
      n: examples in the environment.
      env_index: the environment's index (seeds its own permutation).
      seed: run-level seed (DomainBed's ``trial_seed``).
      holdout_fraction: share of the *out* split, ``int(n * holdout_fraction)`` examples.

    Returns:
      ``(in_indices, out_indices)`` into the environment, disjoint, covering ``range(n)``.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise DomainError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    keys = np.random.default_rng([seed, 1, env_index]).permutation(n)
    cut = int(n * holdout_fraction)
    return keys[cut:], keys[:cut]


def rotate_images(images: np.ndarray, angle: float, interpolation: str = "bicubic") -> np.ndarray:
    """Rotates each (H, W) image by ``angle`` degrees counter-clockwise about its centre (PIL).

    Args:
      images: (N, H, W) uint8 (PIL mode ``L``, rounded back to uint8 as torchvision's
        ``ToPILImage -> rotate -> ToTensor`` does) or float32 (mode ``F``).
      angle: degrees, counter-clockwise as displayed (row 0 at the top).
      interpolation: ``"bicubic"`` (DomainBed 2020) or ``"bilinear"`` (DomainBed now).

    Returns:
      the rotated images, same shape and dtype; pixels from outside the image are 0.
    """
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise DomainError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype not in (np.uint8, np.float32):
        raise DomainError(f"rotate_images expects (N, H, W) uint8 or float32 images, got {images.shape} {images.dtype}")
    fill = 0 if images.dtype == np.uint8 else 0.0  # fromarray: uint8 -> mode L, float32 -> mode F

    def rotate(im: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(im).rotate(angle, resample=resample, fillcolor=fill))

    return np.stack([rotate(im) for im in images]).astype(images.dtype) if len(images) else images.copy()


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def environment_domain(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    env_index: int,
    num_classes: int,
    description: str,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    holdout_fraction: float = HOLDOUT_FRACTION,
) -> Domain:
    """A :class:`Domain` of one environment: ``train`` = in-split, ``val`` = out-split, ``test`` = in-split.

    Args:
      name: registry name, e.g. ``"rmnist/15"``.
      images: (n, H, W, C) float32 inputs of the environment.
      labels: (n,) integer labels.
      env_index: the environment's index (seeds :func:`holdout_split`).
      num_classes: number of classes.
      description: shown by ``da list``.
      seed: the run-level split seed.
      class_names: names of the classes, or None.
      holdout_fraction: share of the out-split (DomainBed's ``--holdout_fraction``, 0.2).
    """
    if images.ndim != 4 or len(images) != len(labels):
        raise DomainError(f"environment {name!r}: expected (n, H, W, C) images and (n,) labels, got "
                          f"{images.shape} and {np.shape(labels)}")
    in_idx, out_idx = holdout_split(len(images), env_index, seed, holdout_fraction)
    x_in, y_in = _read_only(images[in_idx]), _read_only(labels[in_idx].astype(np.int32))
    x_out, y_out = _read_only(images[out_idx]), _read_only(labels[out_idx].astype(np.int32))
    source_in = ArraySource({"image": x_in, "label": y_in})
    return Domain(
        name=name,
        splits={"train": source_in, "val": ArraySource({"image": x_out, "label": y_out}), "test": source_in},
        num_classes=num_classes,
        input_shape=tuple(images.shape[1:]),
        description=description,
        class_names=tuple(class_names) if class_names is not None else None,
    )
