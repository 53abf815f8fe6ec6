"""MDD: the disparity loss on a hand-worked case, its properties and the registered term."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.losses.mdd import AdversarialHead, margin_disparity_discrepancy
from da_framework.losses.registry import LossError, LossInputs
from da_framework.train.method import parse_method


def test_hand_worked_case():
    # source: main predicts class 0, adversary uniform -> CE = log 2
    # target: main predicts class 1, adversary gives p(1) = 3/4 -> log(1 - 3/4) = -2 log 2
    out = margin_disparity_discrepancy(
        jnp.array([[2.0, 0.0]]), jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 1.0]]), jnp.array([[0.0, math.log(3.0)]]),
        margin=4.0, eps=0.0,
    )
    assert math.isclose(float(out), 6 * math.log(2.0), rel_tol=1e-6)
    out1 = margin_disparity_discrepancy(
        jnp.array([[2.0, 0.0]]), jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 1.0]]), jnp.array([[0.0, math.log(3.0)]]),
        margin=1.0, eps=0.0,
    )
    assert math.isclose(float(out1), 3 * math.log(2.0), rel_tol=1e-6)


def test_numpy_reference_batch():
    rng = np.random.default_rng(0)
    ys, ya_s, yt, ya_t = (rng.normal(size=(n, 4)).astype(np.float32) for n in (5, 5, 3, 3))
    sm = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    ps, pt = sm(ya_s.astype(np.float64)), sm(ya_t.astype(np.float64))
    ce = -np.mean(np.log(ps[np.arange(5), ys.argmax(1)]))
    tgt = np.mean(np.log(1 - pt[np.arange(3), yt.argmax(1)] + 1e-6))
    out = margin_disparity_discrepancy(*(jnp.asarray(a) for a in (ys, ya_s, yt, ya_t)), margin=3.0)
    np.testing.assert_allclose(float(out), 3.0 * ce - tgt, rtol=1e-5)


def test_adversary_gradient_pushes_agreement_on_source_disagreement_on_target():
    ys, yt = jnp.array([[2.0, 0.0]]), jnp.array([[0.0, 1.0]])
    gs, gt = jax.grad(margin_disparity_discrepancy, argnums=(1, 3))(ys, jnp.zeros((1, 2)), yt, jnp.zeros((1, 2)))
    assert gs[0, 0] < 0 < gs[0, 1]  # descent raises the source logit of f's class
    assert gt[0, 1] > 0 > gt[0, 0]  # descent lowers the target logit of f's class
    # no gradient into the main classifier's logits
    g_main = jax.grad(margin_disparity_discrepancy, argnums=(0, 2))(ys, jnp.zeros((1, 2)), yt, jnp.zeros((1, 2)))
    assert all(np.all(np.asarray(g) == 0) for g in g_main)


def test_finite_when_adversary_certain():
    out = margin_disparity_discrepancy(jnp.array([[0.0, 1.0]]), jnp.array([[0.0, 1.0]]),
                                       jnp.array([[0.0, 1.0]]), jnp.array([[-100.0, 100.0]]))
    assert np.isfinite(float(out))
    # p_t(1) = 1 in float32, so the target term is log(0 + eps); source: CE of [0, 1] at class 1
    expected = 4.0 * math.log1p(math.exp(-1.0)) - math.log(1e-6)
    assert math.isclose(float(out), expected, rel_tol=1e-5)


def test_bad_inputs():
    z = jnp.zeros((3, 4))
    with pytest.raises(LossError, match="same shapes"):
        margin_disparity_discrepancy(z, jnp.zeros((3, 5)), z, jnp.zeros((3, 5)))
    with pytest.raises(LossError, match="margin"):
        margin_disparity_discrepancy(z, z, z, z, margin=0.0)
    with pytest.raises(LossError, match="empty batch"):
        margin_disparity_discrepancy(jnp.zeros((0, 4)), jnp.zeros((0, 4)), z, z)


def test_registered_term_reverses_feature_gradient():
    rng = np.random.default_rng(1)
    a = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))  # noqa: E731
    inputs = LossInputs(source_features=a(6, 5), target_features=a(6, 5), source_logits=a(6, 3),
                        target_logits=a(6, 3), source_labels=jnp.zeros(6, jnp.int32), progress=jnp.asarray(1.0),
                        key=jax.random.key(0))
    method = parse_method("cross_entropy + 1.0*mdd")
    aux = method.init(jax.random.key(0), inputs)[0]
    assert aux["mdd"]["Dense_1"]["kernel"].shape[-1] == 3  # one logit per class
    module = AdversarialHead()

    def plain(fs):
        adv = module.apply({"params": aux["mdd"]}, (jnp.concatenate([fs, inputs.target_features]),
                                                    jnp.concatenate([inputs.source_logits, inputs.target_logits])))
        return margin_disparity_discrepancy(inputs.source_logits, adv[:6], inputs.target_logits, adv[6:])

    value = method.loss(aux, {}, inputs)[1]["mdd"]
    np.testing.assert_allclose(float(value), float(plain(inputs.source_features)), rtol=1e-5)
    g = jax.grad(lambda f: method.loss(aux, {}, dataclasses.replace(inputs, source_features=f))[1]["mdd"])(
        inputs.source_features)
    coeff = 0.1 * (2.0 / (1.0 + math.exp(-10.0)) - 1.0)
    np.testing.assert_allclose(np.asarray(g), -coeff * np.asarray(jax.grad(plain)(inputs.source_features)),
                               rtol=1e-4, atol=1e-8)


def test_bfloat16_and_batch_order():
    rng = np.random.default_rng(2)
    args = [jnp.asarray(rng.normal(size=(5, 3)).astype(np.float32)) for _ in range(4)]
    ref = float(margin_disparity_discrepancy(*args))
    out = margin_disparity_discrepancy(*(a.astype(jnp.bfloat16) for a in args))
    assert out.dtype == jnp.float32 and abs(float(out) - ref) < 0.1
    perm = np.array([3, 0, 4, 1, 2])
    shuffled = [args[0][perm], args[1][perm], args[2][perm], args[3][perm]]
    assert float(margin_disparity_discrepancy(*shuffled)) == pytest.approx(ref, rel=1e-5)
