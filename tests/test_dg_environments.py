"""DomainBed's MNIST environments (RotatedMNIST, ColoredMNIST) and the embedded DG environments.

Hand cases and independent re-derivations on tiny arrays (no data needed); the defined
rates and sizes checked over the real MNIST in ../shared/data when it is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from da_framework.data import get_domain
from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.dg_digits import rotated_digits_environment
from da_framework.data.dg_mnist import (
    COLOUR_FLIP,
    ROTATIONS,
    color_digits,
    colored_environment,
    mnist_pool,
    rotated_environment,
)
from da_framework.data.domain import DomainError
from da_framework.data.environments import environment_indices, holdout_split, rotate_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "mnist" / "mnist.npz").is_file(), reason="no ../shared/data here")


def _pool(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def test_environment_cut_is_a_strided_partition_and_the_holdout_is_20_percent():
    envs = environment_indices(70, 6, seed=3)
    assert [len(e) for e in envs] == [12, 12, 12, 12, 11, 11]  # perm[i::6]: the first 70 % 6 get one more
    assert sorted(np.concatenate(envs).tolist()) == list(range(70))
    assert all(np.array_equal(a, b) for a, b in zip(envs, environment_indices(70, 6, seed=3)))
    assert not np.array_equal(envs[0], environment_indices(70, 6, seed=4)[0])
    inside, out = holdout_split(11, env_index=2, seed=0)
    assert len(out) == int(11 * 0.2) == 2 and sorted(np.concatenate([inside, out]).tolist()) == list(range(11))
    with pytest.raises(DomainError, match="environments"):
        environment_indices(3, 4)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_rotation_moves_a_blob_counter_clockwise_about_the_image_centre(interpolation, dtype):
    """Centroid of a rotated Gaussian blob vs the rotation matrix applied to the blob's centre
    (pixel-centre coordinates, centre (H-1)/2, y up): a clockwise rotation or a centre half a
    pixel off misses by > 0.5 px."""
    h = 28
    c = (h - 1) / 2
    rows, cols = np.mgrid[0:h, 0:h].astype(np.float64)
    r0, c0 = c - 6.0, c + 3.0
    blob = np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * 1.5**2))
    image = (blob * 255).round().astype(np.uint8) if dtype == np.uint8 else blob.astype(np.float32)
    for angle in (15, 45, 75):
        out = rotate_images(image[None], angle, interpolation)[0].astype(np.float64)
        assert out.dtype == np.float64 and out.shape == (h, h)
        t = np.deg2rad(angle)
        x, u = c0 - c, -(r0 - c)
        expected = (c - (x * np.sin(t) + u * np.cos(t)), c + (x * np.cos(t) - u * np.sin(t)))
        got = ((out * rows).sum() / out.sum(), (out * cols).sum() / out.sum())
        np.testing.assert_allclose(got, expected, atol=0.03)
    assert np.array_equal(rotate_images(image[None], 0, interpolation)[0], image)  # 0 degrees: unchanged
    bicubic = rotate_images(image[None], 30, "bicubic")
    assert not np.array_equal(bicubic, rotate_images(image[None], 30, "bilinear"))


def test_color_digits_hand_case():
    """digits 3, 7, 0, 9 with label flips (F, F, T, F) and colour flips (F, T, F, F):
    y = (1, 0, 0, 0), colour = (1, 1, 0, 0): the image sits in channel 1, 1, 0, 0."""
    images = np.stack([np.full((2, 2), v, np.uint8) for v in (255, 51, 102, 204)])
    x, y = color_digits(images, np.array([3, 7, 0, 9]), np.array([0, 0, 1, 0], bool), np.array([0, 1, 0, 0], bool))
    assert y.tolist() == [1, 0, 0, 0] and y.dtype == np.int32
    assert x.shape == (4, 2, 2, 2) and x.dtype == np.float32
    kept = [1, 1, 0, 0]
    for i, (v, c) in enumerate(zip((255, 51, 102, 204), kept)):
        np.testing.assert_array_equal(x[i, ..., c], np.float32(v) / np.float32(255.0))
        np.testing.assert_array_equal(x[i, ..., 1 - c], 0.0)


def test_tiny_pool_environments_are_deterministic_and_shaped_as_domainbed():
    images, digits = _pool()
    x0, y0 = colored_environment(images, digits, 2, seed=5)
    x1, y1 = colored_environment(images, digits, 2, seed=5)
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert x0.shape == (30, 28, 28, 2) and set(np.unique(y0)) <= {0, 1}
    assert not np.array_equal(colored_environment(images, digits, 2, seed=6)[0], x0)
    assert colored_environment(images, digits, 0, subsample=True)[0].shape == (30, 14, 14, 2)
    xr, yr = rotated_environment(images, digits, 0, seed=5)
    idx = environment_indices(90, 6, seed=5)[0]
    np.testing.assert_array_equal(xr[..., 0], images[idx].astype(np.float32) / np.float32(255.0))  # 0 degrees
    np.testing.assert_array_equal(yr, digits[idx])
    xr3, _ = rotated_environment(images, digits, 3, seed=5)
    idx3 = environment_indices(90, 6, seed=5)[3]
    np.testing.assert_array_equal(xr3[..., 0] * 255, rotate_images(images[idx3], 45).astype(np.float32))
    with pytest.raises(DomainError, match="environments 0..2"):
        colored_environment(images, digits, 3)


def test_domains_from_a_tiny_local_mnist_file(tmp_path):
    """The registered domains read <data_dir>/mnist/mnist.npz: train then test pooled, cut, split 80/20."""
    images, digits = _pool(120, seed=1)
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=images[:100], y_train=digits[:100], x_test=images[100:],
             y_test=digits[100:])
    pool, labels = mnist_pool(str(tmp_path))
    assert np.array_equal(pool, images) and np.array_equal(labels, digits)
    d = get_domain("cmnist/+80%", str(tmp_path))
    assert d.input_shape == (28, 28, 2) and d.num_classes == 2
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [32, 8, 32]  # 40 per env, int(0.2 * 40) out
    x, y = colored_environment(images, digits, 1)
    train, val = d.split("train").arrays, d.split("val").arrays
    both = np.concatenate([train["image"], val["image"]])
    assert sorted(map(bytes, both)) == sorted(map(bytes, x)) and d.split("test") is d.split("train")
    r = get_domain("rmnist/60", str(tmp_path))
    assert r.input_shape == (28, 28, 1) and [len(r.splits[s]) for s in ("train", "val")] == [16, 4]


def test_missing_mnist_is_a_one_line_error(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="mnist is not in the data dir"):
        get_domain("rmnist/15", str(tmp_path))


def test_embedded_rotated_digits_partition_the_sklearn_digits():
    from da_framework.data.digits import _base_images

    images, labels = _base_images()
    sizes = [len(get_domain(f"rdigits/{a}").split("train")) + len(get_domain(f"rdigits/{a}").split("val"))
             for a in ROTATIONS]
    assert sum(sizes) == len(images) == 1797
    x0, y0 = rotated_digits_environment(images, labels, 0)
    idx0 = environment_indices(len(images), 6)[0]
    np.testing.assert_array_equal(x0[..., 0], images[idx0])
    d = get_domain("digits_env/invert")
    assert d.input_shape == (16, 16, 1) and len(d.split("train")) == 240


@needs_shared
def test_real_colored_mnist_has_the_defined_label_noise_and_colour_rates():
    """Over the real 70,000 images: per environment the label disagrees with (digit < 5) for 25%
    and the colour with the label for e = 10%, 20%, 90% (binomial std < 0.3 points at n = 23,333)."""
    images, digits = mnist_pool(str(SHARED))
    assert images.shape == (70000, 28, 28)
    envs = environment_indices(len(images), 3)
    for i, e in enumerate(COLOUR_FLIP.values()):
        x, y = colored_environment(images, digits, i)
        assert len(y) == len(envs[i]) in (23333, 23334)
        noise = np.mean(y != (digits[envs[i]] < 5))
        mass = x.reshape(len(x), -1, 2).sum(1)
        colour = np.argmax(mass, 1)
        assert np.all(mass.min(1) == 0)  # exactly one channel holds the digit
        assert abs(noise - 0.25) < 0.015, noise
        assert abs(np.mean(colour != y) - e) < 0.015, (i, np.mean(colour != y))


@needs_shared
def test_real_rotated_mnist_sizes_and_unrotated_environment():
    d = get_domain("rmnist/0", str(SHARED))
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [9334, 2333, 9334]
    images, digits = mnist_pool(str(SHARED))
    idx = environment_indices(len(images), 6)[0]
    both = np.concatenate([d.split("train").arrays["label"], d.split("val").arrays["label"]])
    assert np.array_equal(np.bincount(both, minlength=10), np.bincount(digits[idx], minlength=10))
    assert float(d.split("train").arrays["image"].max()) == 1.0
