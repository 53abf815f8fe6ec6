"""RotatedMNIST and ColoredMNIST: DomainBed's MNIST environments, built from the real MNIST.

As ``domainbed/datasets.py`` of facebookresearch/DomainBed defines them (Gulrajani &
Lopez-Paz, ICLR 2021), with the environment cut and in/out splits of
:mod:`da_framework.data.environments`:

* **RotatedMNIST** (Ghifary et al., "Domain Generalization for Object Recognition with
  Multi-task Autoencoders", ICCV 2015): the 70,000 MNIST images (train then test) cut into 6
  environments, environment ``i`` rotated by ``(0, 15, 30, 45, 60, 75)[i]`` degrees (PIL,
  counter-clockwise, fill 0; bicubic as DomainBed's 2020 code, ``interpolation="bilinear"``
  as its current code); 10 classes; images 28x28x1 in [0, 1].  Domains ``rmnist/0`` ..
  ``rmnist/75`` (about 11,667 images each: 9,334 in / 2,333 out).
* **ColoredMNIST** (Arjovsky et al., "Invariant Risk Minimization", 2019): the 70,000
  images cut into 3 environments with colour-flip probabilities ``e = (0.1, 0.2, 0.9)``
  (DomainBed's names ``+90%``, ``+80%``, ``-90%``: how often colour agrees with the label).
  Per image: binary label ``y = (digit < 5)``, flipped with probability 0.25; colour
  ``c = y`` flipped with probability ``e``; the image becomes 2 channels, the gray image in
  channel ``c`` and zeros in channel ``1 - c`` (DomainBed stacks ``[x, x]`` and zeroes
  channel ``1 - colors``); 2 classes.  Images are 28x28x2: DomainBed keeps the full size (its
  ``images[:, ::2, ::2]`` subsampling, from the IRM paper's code, is commented out);
  :func:`colored_environment` offers the IRM paper's 14x14 with ``subsample=True``.
  Domains ``cmnist/+90%``, ``cmnist/+80%``, ``cmnist/-90%`` (about 23,333 images each).

Randomness is explicit: the environment cut and splits from ``seed`` (0 for the registered
domains), CMNIST's Bernoulli draws from ``np.random.default_rng([seed, 2, env])``
(label flips first, then colour flips, as DomainBed draws them).  DomainBed draws with
torch's generator under the run's seed, so its members and flips differ from these; the
rates do not.

MNIST is read from ``<data_dir>/mnist/mnist.npz`` (:mod:`da_framework.data.local`; e.g.
``DA_DATA_DIR=../shared/data``), else from a prepared tfds ``mnist`` (whose storage order
differs from the idx order, so its environments hold other images).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np

from da_framework.data.catalog import DatasetNotPreparedError, open_tfds_splits
from da_framework.data.domain import Domain, DomainError
from da_framework.data.environments import environment_domain, environment_indices, rotate_images
from da_framework.data.local import LAYOUT, has_local, load_arrays, local_path
from da_framework.data.registry import register_domain

ROTATIONS: tuple[int, ...] = (0, 15, 30, 45, 60, 75)
COLOUR_FLIP: dict[str, float] = {"+90%": 0.1, "+80%": 0.2, "-90%": 0.9}
LABEL_NOISE = 0.25
_DIGITS = tuple(str(d) for d in range(10))
_BINARY = ("digit 5-9", "digit 0-4")


@functools.lru_cache(maxsize=2)
def _read_mnist(path_key: tuple[str, int, int] | None, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    if path_key is not None:
        arrays = load_arrays("mnist", data_dir)
        x = np.concatenate([arrays["x_train"], arrays["x_test"]])
        y = np.concatenate([arrays["y_train"], arrays["y_test"]])
    else:
        try:
            raw = open_tfds_splits("mnist", {"train": "train", "test": "test"}, data_dir)
        except (DatasetNotPreparedError, ImportError) as e:
            hint = str(e) if isinstance(e, DatasetNotPreparedError) else f"tensorflow_datasets is not installed ({e})"
            raise DatasetNotPreparedError(
                f"mnist is not in the data dir: expected {local_path('mnist', data_dir)} (layout {LAYOUT}), "
                f"or a prepared tfds dataset: {hint}"
            ) from None
        records = [raw[s][i] for s in ("train", "test") for i in range(len(raw[s]))]
        x = np.stack([np.asarray(r["image"], np.uint8).reshape(28, 28) for r in records])
        y = np.asarray([int(r["label"]) for r in records])
    if x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise DomainError(f"MNIST images must be uint8 (N, 28, 28), got {x.dtype} {x.shape}")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def mnist_pool(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's train then test images, uint8 (70000, 28, 28), and digit labels (70000,), read-only.

    Local ``<data_dir>/mnist/mnist.npz`` first, else tfds; cached per file version.

    Raises:
      DatasetNotPreparedError: neither exists (one line with the npz path and the tfds command).
    """
    path_key = None
    if has_local("mnist", data_dir):
        path = local_path("mnist", data_dir)
        stat = os.stat(path)
        path_key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    return _read_mnist(path_key, data_dir)


def rotated_environment(
    images: np.ndarray, digits: np.ndarray, env_index: int, seed: int = 0, interpolation: str = "bicubic"
) -> tuple[np.ndarray, np.ndarray]:
    """RotatedMNIST environment ``env_index`` (0..5) of a pool: its slice, rotated.

    Args:
      images: (n, H, W) uint8 pool (the 70,000 MNIST images, or a tiny test pool).
      digits: (n,) labels.
      env_index: index into :data:`ROTATIONS`.
      seed: seed of the environment cut.
      interpolation: ``"bicubic"`` or ``"bilinear"`` (:func:`~da_framework.data.environments.rotate_images`).

    Returns:
      ``(x, y)``: float32 (m, H, W, 1) in [0, 1] (uint8 rotation, then / 255) and int32 labels.
    """
    if not 0 <= env_index < len(ROTATIONS):
        raise DomainError(f"RotatedMNIST has environments 0..{len(ROTATIONS) - 1}, got {env_index}")
    idx = environment_indices(len(images), len(ROTATIONS), seed)[env_index]
    rotated = rotate_images(np.asarray(images, np.uint8)[idx], ROTATIONS[env_index], interpolation)
    return (rotated.astype(np.float32) / np.float32(255.0))[..., None], np.asarray(digits)[idx].astype(np.int32)


def color_digits(
    images: np.ndarray, digits: np.ndarray, label_flip: np.ndarray, colour_flip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Colours digits given the two Bernoulli draws (ColoredMNIST's deterministic part).

    Args:
      images: (n, H, W) uint8 gray images.
      digits: (n,) digit labels 0..9.
      label_flip: (n,) bool, True where the binary label is flipped.
      colour_flip: (n,) bool, True where the colour disagrees with the (noisy) label.

    Returns:
      ``(x, y)``: float32 (n, H, W, 2) in [0, 1], the image in channel ``c`` and zeros in
      channel ``1 - c`` for colour ``c = y xor colour_flip``; int32 ``y = (digit < 5) xor label_flip``.
    """
    y = (np.asarray(digits) < 5) ^ np.asarray(label_flip, bool)
    colour = y ^ np.asarray(colour_flip, bool)
    gray = np.asarray(images, np.uint8).astype(np.float32) / np.float32(255.0)
    keep = colour[:, None, None, None] == np.arange(2)  # (n, 1, 1, 2): channel c is kept
    return np.where(keep, gray[..., None], np.float32(0.0)), y.astype(np.int32)


def colored_environment(
    images: np.ndarray, digits: np.ndarray, env_index: int, seed: int = 0, subsample: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """ColoredMNIST environment ``env_index`` (0: +90%, 1: +80%, 2: -90%) of a pool.

    Args:
      images: (n, H, W) uint8 pool.
      digits: (n,) digit labels.
      env_index: index into :data:`COLOUR_FLIP`.
      seed: seed of the environment cut and of the draws (``default_rng([seed, 2, env_index])``:
        ``random(m) < 0.25`` label flips, then ``random(m) < e`` colour flips).
      subsample: keep every second row and column (14x14, the IRM paper's code) instead of
        DomainBed's full 28x28.

    Returns:
      ``(x, y)`` as :func:`color_digits`.
    """
    if not 0 <= env_index < len(COLOUR_FLIP):
        raise DomainError(f"ColoredMNIST has environments 0..{len(COLOUR_FLIP) - 1}, got {env_index}")
    idx = environment_indices(len(images), len(COLOUR_FLIP), seed)[env_index]
    rng = np.random.default_rng([seed, 2, env_index])
    label_flip = rng.random(len(idx)) < LABEL_NOISE
    colour_flip = rng.random(len(idx)) < list(COLOUR_FLIP.values())[env_index]
    pool = np.asarray(images, np.uint8)[idx]
    return color_digits(pool[:, ::2, ::2] if subsample else pool, np.asarray(digits)[idx], label_flip, colour_flip)


@functools.lru_cache(maxsize=None)
def _rmnist_domain(angle: int, pool_key: object, data_dir: str | None, seed: int) -> Domain:
    del pool_key  # part of the cache key only
    images, digits = mnist_pool(data_dir)
    env = ROTATIONS.index(angle)
    x, y = rotated_environment(images, digits, env, seed)
    return environment_domain(f"rmnist/{angle}", x, y, env, 10, f"RotatedMNIST (DomainBed), {angle} degrees, 28x28x1",
                              seed, _DIGITS)


@functools.lru_cache(maxsize=None)
def _cmnist_domain(env_name: str, pool_key: object, data_dir: str | None, seed: int) -> Domain:
    del pool_key
    images, digits = mnist_pool(data_dir)
    env = list(COLOUR_FLIP).index(env_name)
    x, y = colored_environment(images, digits, env, seed)
    return environment_domain(f"cmnist/{env_name}", x, y, env, 2,
                              f"ColoredMNIST (DomainBed), environment {env_name}, 28x28x2", seed, _BINARY)


def _pool_key(data_dir: str | None) -> object:
    if has_local("mnist", data_dir):
        stat = os.stat(local_path("mnist", data_dir))
        return (os.path.realpath(local_path("mnist", data_dir)), stat.st_mtime_ns, stat.st_size)
    return ("tfds", data_dir)


def rmnist_domain(angle: int, data_dir: str | None = None, seed: int = 0) -> Domain:
    """The RotatedMNIST environment of ``angle`` degrees (train = in, val = out, test = in); cached."""
    if angle not in ROTATIONS:
        raise DomainError(f"RotatedMNIST angles are {ROTATIONS}, got {angle!r}")
    return _rmnist_domain(angle, _pool_key(data_dir), data_dir, seed)


def cmnist_domain(env_name: str, data_dir: str | None = None, seed: int = 0) -> Domain:
    """The ColoredMNIST environment ``env_name`` (``+90%``, ``+80%`` or ``-90%``); cached."""
    if env_name not in COLOUR_FLIP:
        raise DomainError(f"ColoredMNIST environments are {', '.join(COLOUR_FLIP)}, got {env_name!r}")
    return _cmnist_domain(env_name, _pool_key(data_dir), data_dir, seed)


def _register_all() -> None:
    def rmnist_factory(angle: int) -> Callable[..., Domain]:
        def factory(data_dir: str | None = None) -> Domain:
            return rmnist_domain(angle, data_dir)

        return factory

    def cmnist_factory(env_name: str) -> Callable[..., Domain]:
        def factory(data_dir: str | None = None) -> Domain:
            return cmnist_domain(env_name, data_dir)

        return factory

    for angle in ROTATIONS:
        register_domain(f"rmnist/{angle}", description=f"RotatedMNIST environment, {angle} degrees (DomainBed; local "
                        "npz or tfds)", needs_download=True)(rmnist_factory(angle))
    for env_name, e in COLOUR_FLIP.items():
        register_domain(f"cmnist/{env_name}", description=f"ColoredMNIST environment {env_name} (colour flip {e}, "
                        "label noise 0.25; DomainBed; local npz or tfds)", needs_download=True)(cmnist_factory(env_name))


_register_all()
