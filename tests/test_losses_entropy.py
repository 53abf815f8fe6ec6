"""Entropy, information-maximisation, MCC and BNM losses against NumPy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from da_framework.config import ExperimentConfig
from da_framework.losses.confusion import batch_nuclear_norm, minimum_class_confusion
from da_framework.losses.entropy import entropy_loss, information_maximization
from da_framework.losses.registry import LossError
from da_framework.train import parse_method, train

TINY = {
    "model": "lenet",
    "model_kwargs": {"channels": (4, 8), "dense": 32},
    "bottleneck_dim": 16,
    "batch_size": 16,
    "log_every": 5,
}


@pytest.fixture
def logits():
    return (np.random.default_rng(0).normal(size=(9, 4)) * 2.0).astype(np.float32)


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_entropy_rows(p):
    return -np.array([sum(q * np.log(q) for q in row if q > 0) for row in p])


def np_im(z, w=1.0):
    p = np_softmax(z)
    pbar = p.mean(0)
    return np_entropy_rows(p).mean() - w * (-(pbar * np.log(pbar)).sum())


def np_mcc(z, temperature=2.5, weights=None):
    """MCC with explicit loops over classes (Jin et al. 2020); ``weights`` freezes W if given."""
    y = np_softmax(np.asarray(z, np.float64) / temperature)
    n, k = y.shape
    if weights is None:
        h = np_entropy_rows(y)
        weights = n * (1 + np.exp(-h)) / (1 + np.exp(-h)).sum()
    c = np.zeros((k, k))
    for i in range(n):
        c += weights[i] * np.outer(y[i], y[i])
    c_norm = np.zeros((k, k))
    for j in range(k):
        for jp in range(k):
            c_norm[j, jp] = c[j, jp] / c[:, jp].sum()
    return sum(abs(c_norm[j, jp]) for j in range(k) for jp in range(k) if j != jp) / k, weights


def np_bnm(z):
    return -np.linalg.svd(np_softmax(z), compute_uv=False).sum() / len(z)


def test_entropy_reference_and_bounds(logits):
    np.testing.assert_allclose(jax.jit(entropy_loss)(logits), np_entropy_rows(np_softmax(logits)).mean(), rtol=1e-5)
    np.testing.assert_allclose(entropy_loss(np.zeros((3, 5), np.float32)), np.log(5), rtol=1e-6)
    assert float(entropy_loss(np.eye(4, dtype=np.float32) * 60.0)) < 1e-6
    perm = np.random.default_rng(1).permutation(9)
    np.testing.assert_allclose(entropy_loss(logits[perm]), entropy_loss(logits), rtol=1e-6)


def test_information_maximization_reference_and_minimum(logits):
    np.testing.assert_allclose(jax.jit(information_maximization)(logits), np_im(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(information_maximization(logits, 0.3), np_im(logits, 0.3), rtol=1e-5, atol=1e-6)
    # confident and balanced predictions reach the minimum -log k; collapsed ones do not
    balanced = np.eye(4, dtype=np.float32) * 60.0
    np.testing.assert_allclose(information_maximization(balanced), -np.log(4), atol=1e-5)
    collapsed = np.tile(balanced[:1], (4, 1))
    assert float(information_maximization(collapsed)) > -1e-5


def test_mcc_reference_and_closed_forms(logits):
    ref, _ = np_mcc(logits)
    np.testing.assert_allclose(jax.jit(minimum_class_confusion)(logits), ref, rtol=1e-5)
    np.testing.assert_allclose(minimum_class_confusion(logits, 1.0), np_mcc(logits, 1.0)[0], rtol=1e-5)
    # uniform predictions: every normalised entry is 1/k, so the loss is (k - 1) / k
    np.testing.assert_allclose(minimum_class_confusion(np.zeros((6, 5), np.float32)), 4 / 5, rtol=1e-6)
    # confident, class-disjoint predictions: no confusion
    assert float(minimum_class_confusion(np.eye(4, dtype=np.float32) * 100.0)) < 1e-6
    perm = np.random.default_rng(2).permutation(9)
    np.testing.assert_allclose(minimum_class_confusion(logits[perm]), ref, rtol=1e-5)
    with pytest.raises(LossError, match="temperature"):
        minimum_class_confusion(logits, 0.0)


def test_mcc_gradient_treats_entropy_weights_as_constants(logits):
    """MCC's example weights carry no gradient: compare with finite differences at frozen W."""
    z = np.float64(logits)
    _, w = np_mcc(z)
    eps, num = 1e-6, np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        dz = np.zeros_like(z)
        dz[idx] = eps
        num[idx] = (np_mcc(z + dz, weights=w)[0] - np_mcc(z - dz, weights=w)[0]) / (2 * eps)
    with jax.enable_x64(True):
        got = jax.grad(minimum_class_confusion)(z)
    np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-8)


def test_bnm_reference_and_closed_forms(logits):
    np.testing.assert_allclose(jax.jit(batch_nuclear_norm)(logits), np_bnm(logits), rtol=1e-5)
    # balanced one-hot: A = I, nuclear norm n -> -1; collapsed: rank one with norm sqrt(n) -> -1/sqrt(n)
    np.testing.assert_allclose(batch_nuclear_norm(np.eye(4, dtype=np.float32) * 60.0), -1.0, atol=1e-5)
    collapsed = np.tile(np.array([[60.0, 0, 0, 0]], np.float32), (4, 1))
    np.testing.assert_allclose(batch_nuclear_norm(collapsed), -0.5, atol=1e-5)
    perm = np.random.default_rng(3).permutation(9)
    np.testing.assert_allclose(batch_nuclear_norm(logits[perm]), batch_nuclear_norm(logits), rtol=1e-5)


LOSSES = {
    "entropy": entropy_loss,
    "shot_im": information_maximization,
    "mcc": minimum_class_confusion,
    "bnm": batch_nuclear_norm,
}


@pytest.mark.parametrize("name", ["entropy", "shot_im", "bnm"])
def test_gradients_match_finite_differences(name, logits):
    with jax.enable_x64(True):
        check_grads(jax.jit(LOSSES[name]), (np.float64(logits),), order=1)


@pytest.mark.parametrize("name", LOSSES)
def test_jit_vmap_and_bfloat16(name, logits):
    fn = LOSSES[name]
    stacked = np.stack([logits, logits * 0.3, -logits]).astype(np.float32)
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(stacked), [fn(z) for z in stacked], rtol=1e-5, atol=1e-6)
    got = fn(jnp.asarray(logits, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, fn(logits), rtol=3e-2, atol=1e-2)
    assert np.all(np.isfinite(jax.grad(fn)(logits)))
    np.testing.assert_allclose(fn(logits[:1]), fn(logits[:1]))  # batch of one works


@pytest.mark.parametrize("name", LOSSES)
def test_bad_inputs_raise_loss_error(name):
    fn = LOSSES[name]
    with pytest.raises(LossError, match="2-D"):
        fn(jnp.zeros((4,)))
    with pytest.raises(LossError, match="empty batch"):
        fn(jnp.zeros((0, 3)))


def test_presets_parse():
    assert parse_method("entropy").spec() == "cross_entropy + 0.1*entropy"
    for preset in ("mcc", "bnm", "shot_im"):
        assert [t.loss for t in parse_method(preset).terms] == ["cross_entropy", preset]


@pytest.mark.slow  # a real train() run: ~3 XLA compilations
def test_end_to_end_confusion_terms_train():
    spec = "cross_entropy + 1.0*mcc + 1.0*bnm + 0.1*entropy + 1.0*shot_im"
    r = train(ExperimentConfig(method=spec, steps=3, **TINY))
    logged = [h for h in r.history if "loss" in h][-1]
    for k in ("loss", "loss/mcc", "loss/bnm", "loss/entropy", "loss/shot_im"):
        assert np.isfinite(logged[k]), k
    assert 0.0 <= logged["loss/mcc"] <= 0.9 and -1.0 <= logged["loss/bnm"] < 0.0
    # the other terms' ranges (10 classes) and the logged total is the weighted sum of the logged terms
    assert 0.0 <= logged["loss/entropy"] <= np.log(10) and -np.log(10) <= logged["loss/shot_im"] <= np.log(10)
    terms = {"cross_entropy": 1.0, "mcc": 1.0, "bnm": 1.0, "entropy": 0.1, "shot_im": 1.0}
    np.testing.assert_allclose(
        logged["loss"], sum(w * logged[f"loss/{k}"] for k, w in terms.items()), rtol=1e-5, atol=1e-6
    )
