"""BSP and AFN (SAFN, HAFN) against NumPy float64 references, closed forms and analytic gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.afn import (
    adaptive_feature_norm,
    feature_norms,
    hard_adaptive_feature_norm,
    hard_feature_norm,
    stepwise_feature_norm,
)
from da_framework.losses.bsp import batch_spectral_penalization, top_singular_penalty
from da_framework.losses.registry import LossError, LossInputs, get_loss
from da_framework.train import parse_method, train

TINY = {
    "model": "lenet",
    "model_kwargs": {"channels": (4, 8), "dense": 32},
    "bottleneck_dim": 16,
    "batch_size": 16,
    "log_every": 1,
}


def _f64(x):
    return np.asarray(x, np.float64)


def _inputs(fs, ft):
    n, m = fs.shape[0], ft.shape[0]
    return LossInputs(
        jnp.asarray(fs), jnp.asarray(ft), jnp.zeros((n, 3)), jnp.zeros((m, 3)), jnp.zeros(n, jnp.int32),
        jnp.asarray(0.5), jax.random.key(0),
    )


# --- BSP ---------------------------------------------------------------------------------------


def np_bsp(fs, ft, k=1):
    s = np.linalg.svd(_f64(fs), compute_uv=False)
    t = np.linalg.svd(_f64(ft), compute_uv=False)
    return float(np.sum(s[:k] ** 2) + np.sum(t[:k] ** 2))


@pytest.mark.parametrize("k", [1, 3])
def test_bsp_matches_numpy_svd(k):
    rng = np.random.default_rng(0)
    fs = rng.normal(size=(12, 6)).astype(np.float32)
    ft = (rng.normal(size=(9, 6)) * 2 + 1).astype(np.float32)
    got = jax.jit(batch_spectral_penalization, static_argnums=2)(fs, ft, k)
    np.testing.assert_allclose(got, np_bsp(fs, ft, k), rtol=1e-5)
    # the registered term computes the same
    np.testing.assert_allclose(get_loss("bsp").fn(_inputs(fs, ft), k=k), np_bsp(fs, ft, k), rtol=1e-5)
    # float64 stays float64 and matches tightly
    with jax.enable_x64(True):
        got64 = batch_spectral_penalization(jnp.asarray(_f64(fs)), jnp.asarray(_f64(ft)), k)
        assert got64.dtype == jnp.float64
        np.testing.assert_allclose(got64, np_bsp(fs, ft, k), rtol=1e-12)


def test_bsp_hand_case():
    # diag(3, 2) padded with a zero row: singular values 3, 2; rank-1 ones(2, 2): sigma = 2
    fs = jnp.array([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    ft = jnp.ones((2, 2))
    np.testing.assert_allclose(batch_spectral_penalization(fs, ft), 9.0 + 4.0, rtol=1e-6)
    np.testing.assert_allclose(batch_spectral_penalization(fs, ft, 2), 9.0 + 4.0 + 4.0 + 0.0, atol=1e-5)
    # k = min(n, d) gives the squared Frobenius norm
    np.testing.assert_allclose(top_singular_penalty(fs, 2), float(jnp.sum(fs**2)), rtol=1e-6)
    # the largest, not the smallest, singular value (BSS would give 4 here)
    np.testing.assert_allclose(top_singular_penalty(fs), 9.0, rtol=1e-6)


def test_bsp_gradient_is_2_sigma_u_v():
    rng = np.random.default_rng(1)
    fs = rng.normal(size=(7, 4))
    ft = rng.normal(size=(5, 4))
    g_s, g_t = jax.grad(batch_spectral_penalization, argnums=(0, 1))(jnp.float32(fs), jnp.float32(ft))
    for x, g in ((fs, g_s), (ft, g_t)):
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        np.testing.assert_allclose(g, 2 * s[0] * np.outer(u[:, 0], vt[0]), rtol=1e-4, atol=1e-5)
    # k = 2: 2 sum_i sigma_i u_i v_i^T, checked against a central finite difference too
    u, s, vt = np.linalg.svd(fs, full_matrices=False)
    g2 = jax.grad(top_singular_penalty)(jnp.float32(fs), 2)
    np.testing.assert_allclose(g2, 2 * (u[:, :2] * s[:2]) @ vt[:2], rtol=1e-4, atol=1e-5)
    e = np.zeros_like(fs)
    e[2, 1] = 1e-6
    with jax.enable_x64(True):
        fd = (top_singular_penalty(jnp.asarray(fs + e), 2) - top_singular_penalty(jnp.asarray(fs - e), 2)) / 2e-6
    np.testing.assert_allclose(g2[2, 1], fd, rtol=1e-4)


def test_bsp_repeated_singular_values_have_finite_gradient():
    g = jax.grad(top_singular_penalty)(jnp.eye(3))  # sigma = 1, 1, 1
    assert np.all(np.isfinite(np.asarray(g)))


def test_bsp_bad_inputs():
    with pytest.raises(LossError, match="bsp: .*2-D"):
        batch_spectral_penalization(jnp.zeros((4, 3, 2)), jnp.zeros((4, 3, 2)))
    with pytest.raises(LossError, match="bsp: .*widths differ"):
        batch_spectral_penalization(jnp.zeros((4, 3)), jnp.zeros((4, 5)))
    with pytest.raises(LossError, match="bsp: .*empty batch"):
        batch_spectral_penalization(jnp.zeros((0, 3)), jnp.zeros((4, 3)))
    with pytest.raises(LossError, match=r"bsp: k must be an integer in \[1, min\(n, d\)\] = \[1, 2\]"):
        batch_spectral_penalization(jnp.ones((2, 3)), jnp.ones((4, 3)), k=3)
    with pytest.raises(LossError, match="bsp: k must be"):
        top_singular_penalty(jnp.ones((4, 3)), k=0)


# --- AFN ---------------------------------------------------------------------------------------


def test_feature_norms_and_safn_value():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(6, 5)).astype(np.float32)
    ref = np.sqrt((_f64(f) ** 2).sum(1))  # by hand: sqrt of the row sums of squares
    np.testing.assert_allclose(feature_norms(f), ref, rtol=1e-6)
    # the detached target makes every residual -delta: the value is delta^2 per domain
    np.testing.assert_allclose(stepwise_feature_norm(f, 0.3), 0.09, rtol=1e-5)
    np.testing.assert_allclose(adaptive_feature_norm(f, f[:3], 0.3), 0.18, rtol=1e-5)
    np.testing.assert_allclose(get_loss("afn").fn(_inputs(f, f[:3]), delta=0.3), 0.18, rtol=1e-5)


def test_safn_gradient_is_analytic_stop_gradient():
    """d/df_i = -(2 delta / n) f_i / ||f_i||: the detached target contributes no gradient."""
    rng = np.random.default_rng(3)
    fs = rng.normal(size=(5, 4)).astype(np.float32)
    ft = (rng.normal(size=(3, 4)) * 4).astype(np.float32)
    delta = 0.7
    g_s, g_t = jax.grad(adaptive_feature_norm, argnums=(0, 1))(fs, ft, delta)
    for x, g in ((fs, g_s), (ft, g_t)):
        x = _f64(x)
        unit = x / np.sqrt((x**2).sum(1, keepdims=True))
        np.testing.assert_allclose(g, -2 * delta / x.shape[0] * unit, rtol=1e-5, atol=1e-7)
    # without the stop-gradient the loss would be the constant delta^2 with gradient 0: the
    # gradient above is non-zero, so the target is detached
    assert float(jnp.abs(g_s).min()) > 0
    # a gradient step of size eta enlarges each norm by 2 eta delta / n (to first order)
    eta = 1e-3
    new = fs - eta * np.asarray(g_s)
    np.testing.assert_allclose(
        feature_norms(new) - feature_norms(fs), 2 * eta * delta / fs.shape[0], rtol=1e-2
    )


def test_zero_feature_row_has_zero_gradient_not_nan():
    f = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    g = jax.grad(stepwise_feature_norm)(f, 1.0)
    np.testing.assert_array_equal(np.asarray(g[0]), 0.0)
    np.testing.assert_allclose(g[1], -2 * 1.0 / 2 * np.array([0.6, 0.8]), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(jax.grad(hard_feature_norm)(f, 2.0))))


def test_hafn_reference_and_gradient():
    # hand case: norms 5 and 0 (mean 2.5) against R = 4: (2.5 - 4)^2 = 2.25
    f = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(hard_feature_norm(f, 4.0), 2.25, rtol=1e-6)
    rng = np.random.default_rng(4)
    fs = rng.normal(size=(6, 3)).astype(np.float32)
    ft = (rng.normal(size=(4, 3)) * 3).astype(np.float32)
    r = 2.5

    def np_hafn(x):
        x = _f64(x)
        return (np.sqrt((x**2).sum(1)).mean() - r) ** 2

    np.testing.assert_allclose(hard_adaptive_feature_norm(fs, ft, r), np_hafn(fs) + np_hafn(ft), rtol=1e-5)
    np.testing.assert_allclose(get_loss("hafn").fn(_inputs(fs, ft), radius=r), np_hafn(fs) + np_hafn(ft), rtol=1e-5)
    # d/df_i = 2 (mean norm - R) / n * f_i / ||f_i||
    g = jax.grad(hard_feature_norm)(fs, r)
    x = _f64(fs)
    norms = np.sqrt((x**2).sum(1, keepdims=True))
    np.testing.assert_allclose(g, 2 * (norms.mean() - r) / x.shape[0] * x / norms, rtol=1e-5, atol=1e-7)


def test_afn_bad_inputs():
    with pytest.raises(LossError, match="afn: .*2-D"):
        adaptive_feature_norm(jnp.zeros((4, 3, 2)), jnp.zeros((4, 3, 2)))
    with pytest.raises(LossError, match="afn: .*widths differ"):
        adaptive_feature_norm(jnp.zeros((4, 3)), jnp.zeros((4, 5)))
    with pytest.raises(LossError, match="hafn: .*empty batch"):
        hard_adaptive_feature_norm(jnp.zeros((0, 3)), jnp.zeros((4, 3)))
    with pytest.raises(LossError, match="afn: delta must be > 0"):
        stepwise_feature_norm(jnp.ones((4, 3)), 0.0)
    with pytest.raises(LossError, match="hafn: radius must be > 0"):
        hard_feature_norm(jnp.ones((4, 3)), -1.0)


# --- through the registry and the trainer -----------------------------------------------------


def test_specs_parse_with_hparams():
    m = parse_method("cross_entropy + 1.0*dann + 0.0001*bsp + 0.05*afn(delta=0.3) + 0.05*hafn(radius=25.0)")
    assert [t.loss for t in m.terms] == ["cross_entropy", "dann", "bsp", "afn", "hafn"]
    assert dict(m.terms[3].hparams) == {"delta": 0.3} and m.terms[2].weight == 0.0001
    with pytest.raises(LossError, match="no hyper-parameter"):
        parse_method("cross_entropy + 0.05*afn(radius=1.0)")


@pytest.mark.slow  # a real train() run: a few XLA compilations
def test_end_to_end_bsp_afn_train():
    spec = "cross_entropy + 1.0*dann + 0.0002*bsp + 0.05*afn(delta=0.3) + 0.05*hafn(radius=5.0)"
    r = train(ExperimentConfig(method=spec, steps=3, **TINY))
    logs = [h for h in r.history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert all(np.isfinite(h[k]) for k in ("loss", "loss/bsp", "loss/afn", "loss/hafn"))
        assert h["loss/bsp"] > 0
        # SAFN's value is 2 delta^2 whatever the features (unless a batch is empty)
        np.testing.assert_allclose(h["loss/afn"], 2 * 0.3**2, rtol=1e-4)
