"""Augmentation: determinism by key, shape/dtype, and property checks against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.data import augment as A


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.uniform(size=(6, 16, 16, 1)).astype(np.float32))


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(1)
    return jnp.asarray(rng.uniform(size=(3, 10, 12, 3)).astype(np.float32))


OPS = {
    "random_flip": A.random_flip,
    "random_crop": A.random_crop,
    "random_rotation": A.random_rotation,
    "gaussian_noise": A.gaussian_noise,
    "random_blur": A.random_blur,
    "color_jitter": A.color_jitter,
    "jpeg_quality": A.jpeg_quality,
    "missing_values": A.missing_values,
    "duplicated_values": A.duplicated_values,
    "outlier_values": A.outlier_values,
    "cutout": A.cutout,
    "weak_augment": A.weak_augment,
    "strong_augment": A.strong_augment,
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "strong_augment" else n for n in sorted(OPS)])
def test_deterministic_by_key_shape_dtype_jit(name, images):
    jitted = jax.jit(OPS[name])
    a, b, c = (jitted(jax.random.key(k), images) for k in (0, 0, 1))
    assert a.shape == images.shape and a.dtype == images.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c)), name
    assert jitted(jax.random.key(0), images.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["color_jitter", "jpeg_quality", pytest.param("strong_augment", marks=pytest.mark.slow)])
def test_rgb_and_eager(name, rgb):
    a = OPS[name](jax.random.key(0), rgb)
    assert a.shape == rgb.shape and a.dtype == rgb.dtype
    np.testing.assert_allclose(np.asarray(a), np.asarray(jax.jit(OPS[name])(jax.random.key(0), rgb)), atol=1e-5)


@pytest.mark.slow  # compiles strong_augment under vmap (~10 s, more on a loaded box)
def test_vmap_over_keys(images):
    keys = jax.random.split(jax.random.key(0), 3)
    out = jax.vmap(lambda k: A.strong_augment(k, images))(keys)
    assert out.shape == (3, *images.shape)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(A.strong_augment(keys[1], images)), atol=1e-5)


def test_flip_twice_is_identity_and_matches_numpy(rgb):
    np.testing.assert_array_equal(np.asarray(A.flip_left_right(A.flip_left_right(rgb))), np.asarray(rgb))
    np.testing.assert_array_equal(np.asarray(A.flip_left_right(rgb)), np.asarray(rgb)[:, :, ::-1])
    out = np.asarray(A.random_flip(jax.random.key(0), rgb, p=1.0))
    np.testing.assert_array_equal(out, np.asarray(rgb)[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(A.random_flip(jax.random.key(0), rgb, p=0.0)), np.asarray(rgb))


def test_crop_is_a_translation(images):
    out = np.asarray(A.random_crop(jax.random.key(3), images, pad=2, mode="constant"))
    x = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(len(out)):
        assert any(np.array_equal(out[i], x[i, dy:dy + 16, dx:dx + 16]) for dy in range(5) for dx in range(5))


def test_noise_std():
    x = jnp.full((8, 32, 32, 1), 0.5)
    out = np.asarray(A.gaussian_noise(jax.random.key(0), x, std=0.1)) - 0.5
    assert abs(out.std() - 0.1) < 0.005 and abs(out.mean()) < 0.005


def test_rotation_zero_is_identity(images):
    np.testing.assert_allclose(np.asarray(A.random_rotation(jax.random.key(0), images, 0.0)), np.asarray(images), atol=1e-5)


def test_blur_preserves_constant_image_interior():
    x = jnp.full((2, 12, 12, 1), 0.3)
    out = np.asarray(A.random_blur(jax.random.key(0), x))
    np.testing.assert_allclose(out[:, 3:-3, 3:-3], 0.3, atol=1e-5)


def test_color_jitter_range_and_grey(images, rgb):
    for x in (images, rgb):
        out = np.asarray(A.color_jitter(jax.random.key(0), x, 0.5, 0.5, 0.5))
        assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(np.asarray(A.color_jitter(jax.random.key(0), images, 0.0, 0.0, 0.0)), np.asarray(images), atol=1e-6)


def test_dct_matrix_orthonormal():
    d = A.dct_matrix(8).astype(np.float64)
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-6)


def test_jpeg_reference_and_quality_order(images):
    x = np.asarray(images)
    # quality 100: table of ones -> rounding 8-bit DCT coefficients only; error is tiny
    assert np.abs(np.asarray(A.jpeg_compress(images, 100.0)) - x).max() < 3 / 255
    # NumPy float64 reference of one block-coded image at quality 50 (table = the luminance table)
    d = A.dct_matrix(8).astype(np.float64)
    q = A._JPEG_LUMA.astype(np.float64)
    ref = np.zeros((16, 16))
    img = x[0, :, :, 0].astype(np.float64) * 255 - 128
    for by in range(2):
        for bx in range(2):
            b = img[8 * by:8 * by + 8, 8 * bx:8 * bx + 8]
            c = np.round(d @ b @ d.T / q) * q
            ref[8 * by:8 * by + 8, 8 * bx:8 * bx + 8] = d.T @ c @ d
    ref = np.clip((ref + 128) / 255, 0, 1)
    np.testing.assert_allclose(np.asarray(A.jpeg_compress(images, 50.0))[0, :, :, 0], ref, atol=1e-4)
    err = [np.abs(np.asarray(A.jpeg_compress(images, q)) - x).mean() for q in (10.0, 50.0, 95.0)]
    assert err[0] > err[1] > err[2]
    # non-multiple-of-8 sizes
    assert A.jpeg_compress(jnp.zeros((1, 10, 13, 3)), 30.0).shape == (1, 10, 13, 3)


def test_missing_duplicated_outlier_rates():
    x = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, size=(20, 32, 32, 1)).astype(np.float32))
    xn = np.asarray(x)
    miss = np.asarray(A.missing_values(jax.random.key(0), x, rate=0.2))
    assert abs((miss == 0).mean() - 0.2) < 0.01
    dup = np.asarray(A.duplicated_values(jax.random.key(0), x, rate=0.3))
    changed = dup != xn
    assert abs(changed.mean() - 0.3) < 0.02  # a copy of itself is rare (1 / 1024)
    for i in range(3):  # every changed value exists elsewhere in the same image
        assert np.isin(dup[i][changed[i]], xn[i]).all()
    out = np.asarray(A.outlier_values(jax.random.key(0), x, rate=0.1, magnitude=5.0))
    moved = out != xn
    assert abs(moved.mean() - 0.1) < 0.01
    z = np.abs(out[moved] - np.repeat(xn.mean((1, 2, 3)), 1024)[moved.reshape(20, -1).ravel()])
    assert np.all(z > 0.5)  # 5 std of U(0.2, 0.8) ~ 0.87 from the mean


def test_cutout_square(images):
    out = np.asarray(A.cutout(jax.random.key(0), images, size=5, fill=-1.0))
    for i in range(len(out)):
        ys, xs = np.nonzero(out[i, :, :, 0] == -1.0)
        assert 1 <= len(ys) <= 25 and ys.max() - ys.min() <= 4 and xs.max() - xs.min() <= 4


def test_transition_matrices_rows():
    for m in (A.symmetric_transition_matrix(5, 0.3), A.pair_flip_transition_matrix(5, 0.3)):
        m = np.asarray(m, np.float64)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.diag(m), 0.7, atol=1e-6)
        assert np.all(m >= 0)
    np.testing.assert_allclose(np.asarray(A.symmetric_transition_matrix(3, 0.3)),
                               [[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]], atol=1e-6)
    assert float(A.pair_flip_transition_matrix(4, 0.3)[3, 0]) == pytest.approx(0.3)


def test_label_noise_rates():
    labels = jnp.asarray(np.arange(20000) % 10, jnp.int32)
    noisy = np.asarray(A.symmetric_label_noise(jax.random.key(0), labels, 10, 0.3))
    flipped = noisy != np.asarray(labels)
    assert abs(flipped.mean() - 0.3) < 0.015
    counts = np.bincount((noisy[flipped] - np.asarray(labels)[flipped]) % 10, minlength=10)[1:]  # offsets 1..9
    assert counts.min() > 0.7 * counts.mean()  # flipped labels spread over the other classes
    pair = np.asarray(A.apply_transition_matrix(jax.random.key(1), labels, A.pair_flip_transition_matrix(10, 0.2)))
    moved = pair != np.asarray(labels)
    assert abs(moved.mean() - 0.2) < 0.015
    np.testing.assert_array_equal(pair[moved], (np.asarray(labels)[moved] + 1) % 10)
    assert pair.dtype == np.int32
    jitted = jax.jit(A.apply_transition_matrix)(jax.random.key(1), labels, A.pair_flip_transition_matrix(10, 0.2))
    np.testing.assert_array_equal(np.asarray(jitted), pair)


def test_bad_inputs(images):
    with pytest.raises(A.AugmentError, match=r"\(N, H, W, C\)"):
        A.gaussian_noise(jax.random.key(0), images[0])
    with pytest.raises(A.AugmentError, match="channels"):
        A.random_flip(jax.random.key(0), jnp.zeros((2, 8, 8, 4)))
    with pytest.raises(A.AugmentError, match="rate"):
        A.missing_values(jax.random.key(0), images, rate=1.5)
    with pytest.raises(A.AugmentError, match="sum to 1"):
        A.apply_transition_matrix(jax.random.key(0), jnp.zeros(3, jnp.int32), jnp.ones((3, 3)))
    with pytest.raises(A.AugmentError, match="1-D"):
        A.symmetric_label_noise(jax.random.key(0), jnp.zeros((3, 1), jnp.int32), 3, 0.1)
