"""CDAN / CDAN+E: the conditioning maps and the weighting against NumPy float64 references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from da_framework.losses.adversarial import DomainDiscriminator, domain_adversarial_loss
from da_framework.losses.cdan import (
    conditional_features,
    entropy_weights,
    multilinear_map,
    random_matrices,
    randomized_multilinear_map,
    weighted_domain_adversarial_loss,
)
from da_framework.losses.registry import LossError, LossInputs
from da_framework.train.method import parse_method


@pytest.fixture
def fg():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 5)).astype(np.float32)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    g = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return f, logits, g.astype(np.float32)


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_multilinear_map_matches_numpy(fg):
    f, _, g = fg
    ref = np.stack([np.outer(f[i].astype(np.float64), g[i]).ravel() for i in range(len(f))])
    out = multilinear_map(jnp.asarray(f), jnp.asarray(g))
    assert out.shape == (6, 15)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)


def test_randomized_map_matches_numpy(fg):
    f, _, g = fg
    r_f, r_g = random_matrices(jax.random.key(3), 5, 3, 64)
    ref = (f.astype(np.float64) @ np.asarray(r_f, np.float64)) * (g @ np.asarray(r_g, np.float64)) / 8.0
    out = randomized_multilinear_map(jnp.asarray(f), jnp.asarray(g), r_f, r_g)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)


def test_randomized_map_preserves_inner_products_in_expectation(fg):
    # <T_o(f,g), T_o(f',g')> is an unbiased estimate of <f,f'><g,g'> (Long et al. 2018, Thm 1).
    f, _, g = fg
    r_f, r_g = random_matrices(jax.random.key(0), 5, 3, 200_000)
    out = np.asarray(randomized_multilinear_map(jnp.asarray(f[:2]), jnp.asarray(g[:2]), r_f, r_g), np.float64)
    exact = float(f[0].astype(np.float64) @ f[1]) * float(g[0].astype(np.float64) @ g[1])
    scale = np.linalg.norm(f[0]) * np.linalg.norm(f[1]) * np.linalg.norm(g[0]) * np.linalg.norm(g[1])
    assert abs(out[0] @ out[1] - exact) < 0.02 * scale


def test_random_matrices_fixed_by_key():
    a = random_matrices(jax.random.key(7), 4, 2, 8)
    b = random_matrices(jax.random.key(7), 4, 2, 8)
    c = random_matrices(jax.random.key(8), 4, 2, 8)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.allclose(np.asarray(a[0]), np.asarray(c[0]))


def test_conditional_features_switches_at_threshold(fg):
    f, logits, _ = fg
    assert conditional_features(jnp.asarray(f), jnp.asarray(logits)).shape == (6, 15)  # 15 <= 4096
    assert conditional_features(jnp.asarray(f), jnp.asarray(logits), threshold=10, random_dim=32).shape == (6, 32)
    assert conditional_features(jnp.asarray(f), jnp.asarray(logits), randomized=True, random_dim=16).shape == (6, 16)


def test_conditional_features_no_gradient_through_predictions(fg):
    f, logits, _ = fg
    grad = jax.grad(lambda z: jnp.sum(conditional_features(jnp.asarray(f), z) ** 2))(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_entropy_weights_match_numpy(fg):
    _, logits, _ = fg
    p = np_softmax(logits)
    h = -(p * np.log(p)).sum(1)
    w = 1 + np.exp(-h)
    np.testing.assert_allclose(np.asarray(entropy_weights(jnp.asarray(logits))), w / w.sum(), rtol=1e-5)
    # confident examples weigh more: one-hot-like logits vs uniform
    w2 = np.asarray(entropy_weights(jnp.array([[20.0, 0.0, 0.0], [0.0, 0.0, 0.0]])))
    assert w2[0] > w2[1] and math.isclose(w2.sum(), 1.0, rel_tol=1e-6)
    np.testing.assert_allclose(w2, np.array([2.0, 1 + 1 / 3]) / (3 + 1 / 3), rtol=1e-5)


def test_weighted_loss_reduces_to_dann_and_matches_numpy():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=5).astype(np.float32), rng.normal(size=4).astype(np.float32)
    np.testing.assert_allclose(
        float(weighted_domain_adversarial_loss(jnp.asarray(s), jnp.asarray(t))),
        float(domain_adversarial_loss(jnp.asarray(s), jnp.asarray(t))),
        rtol=1e-6,
    )
    ws, wt = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(4))
    sp = lambda z: np.log1p(np.exp(z))  # noqa: E731  BCE(z,1)=softplus(-z), BCE(z,0)=softplus(z)
    ref = 0.5 * ((ws * sp(-s.astype(np.float64))).sum() + (wt * sp(t.astype(np.float64))).sum())
    out = weighted_domain_adversarial_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(ws), jnp.asarray(wt))
    np.testing.assert_allclose(float(out), ref, rtol=1e-5)


def test_maps_gradients(fg):
    f, _, g = fg
    check_grads(lambda x: multilinear_map(x, jnp.asarray(g)), (jnp.asarray(f),), order=1, modes=["rev"], atol=1e-2)
    r_f, r_g = random_matrices(jax.random.key(0), 5, 3, 16)
    check_grads(
        lambda x: randomized_multilinear_map(x, jnp.asarray(g), r_f, r_g), (jnp.asarray(f),), order=1, modes=["rev"],
        atol=1e-2,
    )


def test_bad_inputs(fg):
    f, _, g = fg
    with pytest.raises(LossError, match="different batch sizes"):
        multilinear_map(jnp.asarray(f), jnp.asarray(g[:3]))
    with pytest.raises(LossError, match="2-D"):
        multilinear_map(jnp.asarray(f[0]), jnp.asarray(g))
    with pytest.raises(LossError, match="do not fit"):
        r_f, r_g = random_matrices(jax.random.key(0), 4, 3, 8)
        randomized_multilinear_map(jnp.asarray(f), jnp.asarray(g), r_f, r_g)
    with pytest.raises(LossError, match="empty batch"):
        entropy_weights(jnp.zeros((0, 3)))


def _inputs(n=8, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    a = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))  # noqa: E731
    return LossInputs(
        source_features=a(n, d), target_features=a(n, d), source_logits=a(n, k), target_logits=a(n, k),
        source_labels=jnp.asarray(rng.integers(0, k, n)), progress=jnp.asarray(0.5), key=jax.random.key(0),
    )


@pytest.mark.parametrize("name", ["cdan", "cdan_e"])
def test_registered_terms_through_method(name):
    inputs = _inputs()
    method = parse_method(f"cross_entropy + 1.0*{name}")
    aux = method.init(jax.random.key(1), inputs)[0]
    total, parts, _, _ = method.loss(aux, {}, inputs)
    assert 0.0 < float(parts[name]) < 5.0
    # the total is the source cross-entropy (float64 NumPy) plus 1.0 times the term
    ce = -np.mean(np.log(np_softmax(inputs.source_logits))[np.arange(8), np.asarray(inputs.source_labels)])
    np.testing.assert_allclose(float(parts["cross_entropy"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(total), ce + float(parts[name]), rtol=1e-5)
    # the discriminator saw the (d*k = 18)-wide multilinear map
    assert aux[name]["Dense_0"]["kernel"].shape[0] == 18
    # gradient reversal: the features' gradient is -lambda(p) times the plain discriminator-loss gradient
    module = DomainDiscriminator()

    def plain(fs):
        h = conditional_features(jnp.concatenate([fs, inputs.target_features]),
                                 jnp.concatenate([inputs.source_logits, inputs.target_logits]))
        d = module.apply({"params": aux[name]}, h)
        w = (entropy_weights(inputs.source_logits), entropy_weights(inputs.target_logits)) if name == "cdan_e" else (None, None)
        return weighted_domain_adversarial_loss(d[:8], d[8:], *w)

    grad_term = jax.grad(lambda f: method.loss(aux, {}, _replace(inputs, source_features=f))[1][name])(inputs.source_features)
    coeff = 2.0 / (1.0 + math.exp(-5.0)) - 1.0
    np.testing.assert_allclose(np.asarray(grad_term), -coeff * np.asarray(jax.grad(plain)(inputs.source_features)),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(parts[name]), float(plain(inputs.source_features)), rtol=1e-5)


def test_randomized_switch_in_term():
    inputs = _inputs()
    method = parse_method("1.0*cdan(randomized=True, random_dim=32)")
    aux = method.init(jax.random.key(1), inputs)[0]
    assert aux["cdan"]["Dense_0"]["kernel"].shape[0] == 32
    with pytest.raises(LossError, match="randomized"):
        m = parse_method("1.0*cdan(randomized=maybe)")
        m.init(jax.random.key(1), inputs)[0]


def _replace(inputs, **kw):
    import dataclasses

    return dataclasses.replace(inputs, **kw)


def test_bfloat16_and_vmap(fg):
    f, logits, _ = fg
    out = conditional_features(jnp.asarray(f, jnp.bfloat16), jnp.asarray(logits, jnp.bfloat16))
    ref = conditional_features(jnp.asarray(f), jnp.asarray(logits))
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.05)
    w = jax.vmap(entropy_weights)(jnp.stack([jnp.asarray(logits), 2 * jnp.asarray(logits)]))
    np.testing.assert_allclose(np.asarray(w[0]), np.asarray(entropy_weights(jnp.asarray(logits))), rtol=1e-6)
    # bfloat16 logits: the weights are computed in float32, so they match a float64 reference
    # of the bfloat16-rounded logits far closer than bfloat16 arithmetic could (~4e-3)
    low = jnp.asarray(logits, jnp.bfloat16)
    p = np_softmax(np.asarray(low, np.float64))
    ref = 1.0 + np.exp((p * np.log(p)).sum(1))
    np.testing.assert_allclose(np.asarray(entropy_weights(low)), ref / ref.sum(), rtol=1e-5)
