"""Losses against NumPy float64 references, and their properties."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from da_framework.losses import (
    LossError,
    cross_entropy,
    dann_ramp,
    domain_adversarial_loss,
    gradient_reversal,
    mk_mmd,
)
from da_framework.losses.mmd import DEFAULT_ALPHAS


def np_mk_mmd(x: np.ndarray, y: np.ndarray, alphas=DEFAULT_ALPHAS, unbiased=False) -> float:
    """Independent float64 reference: explicit loops over kernels, no shared helpers."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    z = np.concatenate([x, y])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    nz = len(z)
    scale = d2.sum() / (nz * (nz - 1))
    k = np.mean([np.exp(-d2 / (2 * a * scale)) for a in alphas], axis=0)
    n = len(x)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        m = len(y)
        return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 5)).astype(np.float32), (rng.normal(size=(9, 5)) + 0.7).astype(np.float32)


class MMDTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_reference(self):
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(12, 5)).astype(np.float32), (rng.normal(size=(9, 5)) + 0.7).astype(np.float32)
        for est, unbiased in [("biased", False), ("unbiased", True)]:
            got = self.variant(lambda a, b, est=est: mk_mmd(a, b, estimator=est))(x, y)
            np.testing.assert_allclose(got, np_mk_mmd(x, y, unbiased=unbiased), rtol=1e-4, atol=1e-6)


def test_mmd_zero_for_identical_batches(feats):
    x, _ = feats
    np.testing.assert_allclose(mk_mmd(x, x), 0.0, atol=1e-6)


def test_mmd_symmetric_and_order_invariant(feats):
    x, y = feats
    np.testing.assert_allclose(mk_mmd(x, y), mk_mmd(y, x), rtol=1e-5)
    perm = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_allclose(mk_mmd(x[perm], y), mk_mmd(x, y), rtol=1e-5)


def test_mmd_grows_with_shift(feats):
    x, _ = feats
    assert float(mk_mmd(x, x + 0.5)) < float(mk_mmd(x, x + 2.0))


def test_mmd_gradients_finite_and_correct(feats):
    x, y = feats
    with jax.enable_x64(True):  # fixed bandwidth: the default one is stop-gradient by design
        x64, y64 = np.float64(x), np.float64(y)
        check_grads(jax.jit(lambda a, b: mk_mmd(a, b, sq_scale=3.0)), (x64, y64), order=1, modes=["rev"])
        check_grads(jax.jit(lambda a, b: mk_mmd(a, b, sq_scale=3.0, estimator="unbiased")), (x64, y64), order=1)
    g = jax.grad(mk_mmd)(x, y)
    assert np.all(np.isfinite(g))


def test_mmd_bfloat16_inputs(feats):
    x, y = feats
    got = mk_mmd(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_mk_mmd(x, y), rtol=5e-2, atol=5e-3)


def test_mmd_bad_inputs():
    with pytest.raises(LossError, match="feature widths differ"):
        mk_mmd(jnp.zeros((4, 3)), jnp.zeros((4, 5)))
    with pytest.raises(LossError, match="empty batch"):
        mk_mmd(jnp.zeros((0, 3)), jnp.zeros((4, 3)))
    with pytest.raises(LossError, match="2-D"):
        mk_mmd(jnp.zeros((4, 3, 2)), jnp.zeros((4, 3, 2)))
    with pytest.raises(LossError, match="estimator"):
        mk_mmd(jnp.zeros((4, 3)), jnp.zeros((4, 3)), estimator="quadratic")


def test_gradient_reversal_flips_and_scales_gradient():
    x = jnp.array([1.0, -2.0, 3.0])
    g_plain = jax.grad(lambda v: jnp.sum(jnp.sin(v)))(x)
    g_rev = jax.grad(lambda v: jnp.sum(jnp.sin(gradient_reversal(v, 0.3))))(x)
    np.testing.assert_allclose(g_rev, -0.3 * g_plain, rtol=1e-6)
    np.testing.assert_array_equal(gradient_reversal(x, 0.3), x)  # identity forward
    np.testing.assert_allclose(jax.jit(jax.grad(lambda v: jnp.sum(gradient_reversal(v, 2.0))))(x), -2.0)


def test_dann_ramp_closed_form():
    p = np.array([0.0, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(dann_ramp(p), 2 / (1 + np.exp(-10 * p)) - 1, rtol=1e-6)
    assert float(dann_ramp(0.0)) == 0.0


def test_domain_adversarial_loss_reference():
    s, t = np.array([2.0, -1.0, 0.5]), np.array([0.3, -3.0])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    ref = 0.5 * (np.mean(-np.log(sig(s))) + np.mean(-np.log(1 - sig(t))))
    np.testing.assert_allclose(domain_adversarial_loss(s, t), ref, rtol=1e-6)
    # a discriminator that cannot tell the domains apart scores log 2
    np.testing.assert_allclose(domain_adversarial_loss(np.zeros(4), np.zeros(3)), np.log(2), rtol=1e-6)


def test_cross_entropy_reference():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    labels = np.array([0, 1])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(cross_entropy(logits, labels), -np.mean(logp[[0, 1], labels]), rtol=1e-6)
    smooth = 0.1
    target = np.full((2, 3), smooth / 3) + (1 - smooth) * np.eye(3)[labels]
    np.testing.assert_allclose(cross_entropy(logits, labels, smooth), -np.mean((target * logp).sum(1)), rtol=1e-6)
    with pytest.raises(LossError, match="expected logits"):
        cross_entropy(np.zeros((2, 3)), np.zeros((3,), np.int32))
