"""FixMatch and mean teacher: the pure losses on hand cases, the EMA teacher in the train state."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.losses.fixmatch import confidence_mask, fixmatch_loss
from da_framework.losses.mean_teacher import consistency_loss, ema_update
from da_framework.losses.registry import LossError
from da_framework.models.registry import make_model
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.step import make_train_step


def test_confidence_mask_threshold():
    # softmax of [log 9, 0] = [0.9, 0.1]; of [0, 0] = [0.5, 0.5]
    logits = jnp.array([[math.log(9.0), 0.0], [0.0, 0.0], [0.0, math.log(19.0)]])
    np.testing.assert_array_equal(np.asarray(confidence_mask(logits, 0.9)), [1.0, 0.0, 1.0])  # 0.9 >= 0.9, 0.95
    np.testing.assert_array_equal(np.asarray(confidence_mask(logits, 0.95)), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(confidence_mask(logits, 0.5)), [1.0, 1.0, 1.0])


def test_fixmatch_hand_case():
    weak = jnp.array([[math.log(9.0), 0.0], [0.0, 0.0], [0.0, math.log(19.0)]])  # confident: rows 0 and 2
    strong = jnp.array([[0.0, 0.0], [5.0, -5.0], [math.log(3.0), 0.0]])
    # row 0: pseudo 0, CE([0,0]) = log 2; row 2: pseudo 1, p(1) = 1/4 -> CE = log 4; row 1 masked; mean over 3
    expected = (math.log(2.0) + math.log(4.0)) / 3.0
    assert math.isclose(float(fixmatch_loss(weak, strong, 0.9)), expected, rel_tol=1e-6)
    assert math.isclose(float(fixmatch_loss(weak, strong, 0.95)), math.log(4.0) / 3.0, rel_tol=1e-6)
    assert float(fixmatch_loss(weak, strong, 1.0)) == 0.0
    # no gradient through the weak view; the strong view gets CE gradients only on unmasked rows
    gw, gs = jax.grad(fixmatch_loss, argnums=(0, 1))(weak, strong, 0.9)
    assert np.all(np.asarray(gw) == 0) and np.all(np.asarray(gs[1]) == 0) and np.any(np.asarray(gs[0]) != 0)
    np.testing.assert_allclose(np.asarray(gs[2]), (np.array([0.75, 0.25]) - np.array([0.0, 1.0])) / 3.0, rtol=1e-5)


def test_fixmatch_bad_inputs():
    with pytest.raises(LossError, match="threshold"):
        fixmatch_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 1.5)
    with pytest.raises(LossError, match="widths differ|must match"):
        fixmatch_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_consistency_loss_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    sm = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    ref = np.mean((sm(a) - sm(b)) ** 2)
    np.testing.assert_allclose(float(consistency_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))),
                               ref, rtol=1e-5)
    assert float(consistency_loss(jnp.asarray(a), jnp.asarray(a))) == 0.0
    g_teacher = jax.grad(consistency_loss, argnums=1)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert np.all(np.asarray(g_teacher) == 0)


def test_ema_update_exact():
    t = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
    s = {"w": jnp.array([3.0, 0.0]), "b": jnp.array(0.0)}
    out = ema_update(t, s, 0.75)
    np.testing.assert_allclose(np.asarray(out["w"]), [1.5, 1.5])
    np.testing.assert_allclose(float(out["b"]), 3.0)
    with pytest.raises(LossError, match="decay"):
        parse_method("cross_entropy + mean_teacher(decay=1.5)")


@pytest.mark.parametrize(
    "spec",
    [
        "cross_entropy + 1.0*mean_teacher",
        "cross_entropy + 1.0*mean_teacher(decay=0.9)",  # the EMA decay is a hyper-parameter
        pytest.param("cross_entropy + 1.0*fixmatch(threshold=0.0)", marks=pytest.mark.slow),  # compiles strong_augment
    ],
)
def test_teacher_in_state_and_step_runs(spec):
    model = make_model("mlp", 3, None, hidden=(8,))
    method = parse_method(spec)
    tx = optax.sgd(0.5)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(size=(4, 8, 8, 1)).astype(np.float32))
    xt = jnp.asarray(rng.uniform(size=(4, 8, 8, 1)).astype(np.float32))
    ys = jnp.asarray([0, 1, 2, 0])
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    step = jax.jit(make_train_step(model, method, tx, total_steps=10))
    new, metrics = step(state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(1))
    term = method.terms[1].loss
    # the step's loss is the float64 source cross-entropy of the initial student plus 1.0 * the term
    z = np.asarray(model.apply({"params": state.params["model"]}, xs)[0], np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -np.mean(logp[np.arange(4), np.asarray(ys)])
    np.testing.assert_allclose(float(metrics["loss/cross_entropy"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), ce + float(metrics[f"loss/{term}"]), rtol=1e-5)
    if term != "mean_teacher":
        assert float(metrics["loss/fixmatch"]) > 0.0  # threshold 0: every example is pseudo-labelled
        return
    # teacher == student at step 0, but the two views are perturbed independently, so the
    # consistency is positive; a mean of squared softmax differences is at most 2 / k
    assert 0.0 < float(metrics["loss/mean_teacher"]) <= 2.0 / 3.0
    p0, p1 = state.params["model"], new.params["model"]
    d = dict(method.terms[1].hparams).get("decay", 0.99)
    expected = jax.tree.map(lambda a, b: d * a + (1 - d) * b, state.term_states["mean_teacher"], p1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7),
                 new.term_states["mean_teacher"], expected)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state.term_states["mean_teacher"], p0)  # the teacher starts as the student
    assert not np.allclose(np.asarray(jax.tree.leaves(p0)[0]), np.asarray(jax.tree.leaves(p1)[0]))


def test_bfloat16_and_vmap():
    rng = np.random.default_rng(3)
    w, s = (jnp.asarray(rng.normal(size=(2, 6, 4)).astype(np.float32) * 3) for _ in range(2))
    ref = [float(fixmatch_loss(w[i], s[i], 0.5)) for i in range(2)]
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda a, b: fixmatch_loss(a, b, 0.5))(w, s)), ref, rtol=1e-5)
    assert abs(float(fixmatch_loss(w[0].astype(jnp.bfloat16), s[0].astype(jnp.bfloat16), 0.5)) - ref[0]) < 0.1
    c = float(consistency_loss(w[0].astype(jnp.bfloat16), s[0].astype(jnp.bfloat16)))
    assert abs(c - float(consistency_loss(w[0], s[0]))) < 0.01
