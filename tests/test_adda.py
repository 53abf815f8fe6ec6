"""ADDA: one pretraining update and one adaptation update (tllib's GRL form and the paper's two
inverted-label sub-steps) of a linear encoder + linear head + small ReLU discriminator against a
NumPy float64 re-derivation with SGD; the frozen head, the snapshot at the switch, the optimiser
reset, the errors, and a short run by name on the embedded digits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.adda import warm_start_coeff
from da_framework.losses.registry import LossError
from da_framework.methods.adda import make_adda_step
from da_framework.models.classifier import Classifier
from da_framework.train import train
from da_framework.train.loop import build, evaluate_state
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.trainers import get_trainer, resolve_trainer

B, D_IN, WIDTH, C, HIDDEN, LR = 6, 4, 3, 3, 4, 0.1


class LinearEncoder(nn.Module):
    """A linear backbone: flatten, then one Dense layer (no non-linearity)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dense(WIDTH)(jnp.reshape(x, (x.shape[0], -1)))


MODEL = Classifier(LinearEncoder(), C)


def _batches():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(B, 2, 2, 1)).astype(np.float32)
    xt = (rng.normal(size=(B, 2, 2, 1)) + 1.5).astype(np.float32)
    ys = np.array([0, 1, 2, 0, 1, 2], np.int32)
    return {"image": jnp.asarray(xs), "label": jnp.asarray(ys)}, {"image": jnp.asarray(xt)}


def _setup(spec: str, tx, total: int = 3):
    src, tgt = _batches()
    method = parse_method(spec)
    state = init_train_state(jax.random.key(1), MODEL, method, tx, src["image"], tgt["image"], src["label"])
    traces = [0]

    def counted(state, s, t, key):
        traces[0] += 1
        return make_adda_step(MODEL, method, tx, total)(state, s, t, key)

    return state, src, tgt, jax.jit(counted), traces


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _close(got, want):
    for g, w in zip(jax.tree.leaves(_f64(got)), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _encode(enc, x):
    return x.reshape(len(x), -1) @ enc["Dense_0"]["kernel"] + enc["Dense_0"]["bias"]


def _disc(dp, f):
    """D(f) and the backward pass: returns (logits, backward(g_logits) -> (D grads, feature grads))."""
    a1 = f @ dp["Dense_0"]["kernel"] + dp["Dense_0"]["bias"]
    h1 = np.maximum(a1, 0)
    a2 = h1 @ dp["Dense_1"]["kernel"] + dp["Dense_1"]["bias"]
    h2 = np.maximum(a2, 0)
    d = h2 @ dp["Dense_2"]["kernel"][:, 0] + dp["Dense_2"]["bias"][0]

    def backward(g):
        g_a2 = np.outer(g, dp["Dense_2"]["kernel"][:, 0]) * (a2 > 0)
        g_a1 = (g_a2 @ dp["Dense_1"]["kernel"].T) * (a1 > 0)
        grads = {"Dense_0": {"kernel": f.T @ g_a1, "bias": g_a1.sum(0)},
                 "Dense_1": {"kernel": h1.T @ g_a2, "bias": g_a2.sum(0)},
                 "Dense_2": {"kernel": h2.T @ g[:, None], "bias": np.array([g.sum()])}}
        return grads, g_a1 @ dp["Dense_0"]["kernel"].T

    return d, backward


def _l_d(d_s, d_t):
    """L_D = (mean softplus(-d_s) + mean softplus(d_t)) / 2 and its gradient in the logits."""
    loss = 0.5 * (np.mean(np.logaddexp(0, -d_s)) + np.mean(np.logaddexp(0, d_t)))
    return loss, -0.5 * _sigmoid(-d_s) / len(d_s), 0.5 * _sigmoid(d_t) / len(d_t)


def _encoder_grads(x, g_f):
    return {"Dense_0": {"kernel": x.reshape(len(x), -1).T @ g_f, "bias": g_f.sum(0)}}


def _sgd(p, g, scale=1.0):
    return jax.tree.map(lambda a, b: a - LR * scale * b, p, g)


def _pretrain_reference(params, src):
    """One SGD step of the source cross-entropy over encoder and head, by hand."""
    xs, ys = np.asarray(src["image"], np.float64), np.asarray(src["label"])
    enc, head = params["model"]["backbone"], params["model"]["head"]
    f = _encode(enc, xs)
    z = f @ head["kernel"] + head["bias"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(C)[ys]) / len(ys)
    g_head = {"kernel": f.T @ dz, "bias": dz.sum(0)}
    return {"backbone": _sgd(enc, _encoder_grads(xs, dz @ head["kernel"].T)), "head": _sgd(head, g_head)}


def test_warm_start_coeff_is_tllibs_schedule():
    for i, (alpha, lo, hi, n) in [(0, (1.0, 0.0, 2.0, 1000)), (500, (1.0, 0.0, 2.0, 1000)),
                                  (20000, (1.0, 0.0, 2.0, 1000)), (7, (2.0, 0.5, 1.5, 10))]:
        want = 2.0 * (hi - lo) / (1.0 + np.exp(-alpha * i / n)) - (hi - lo) + lo
        assert float(warm_start_coeff(jnp.asarray(i), alpha, lo, hi, n)) == pytest.approx(want, rel=1e-6)


def test_pretraining_update_matches_numpy_and_leaves_the_discriminator():
    state, src, tgt, step, _ = _setup("cross_entropy + adda(pretrain_steps=1, hidden_size=4)", optax.sgd(LR))
    new, metrics = step(state, src, tgt, jax.random.key(0))
    _close(new.params["model"], _pretrain_reference(_f64(state.params), src))
    assert _same(new.params["aux"], state.params["aux"])  # D not trained in phase 1
    assert _same(new.term_states["adda"], state.term_states["adda"])  # the snapshot is still the initial copy
    assert _same(new.term_states["adda"]["source_encoder"], {"backbone": state.params["model"]["backbone"]})
    assert float(metrics["loss/adda/phase"]) == 1.0 and float(metrics["loss/adda"]) == 0.0


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_grl_adaptation_update_matches_numpy(weight):
    spec = f"cross_entropy + {weight}*adda(pretrain_steps=1, hidden_size={HIDDEN}, lo=0.5, hi=2.0)"
    state0, src, tgt, step, traces = _setup(spec, optax.sgd(LR))
    state1, _ = step(state0, src, tgt, jax.random.key(0))  # phase 1
    state2, metrics = step(state1, src, tgt, jax.random.key(1))  # the switch: first adaptation step
    p = _f64(state1.params)
    xs, xt = np.asarray(src["image"], np.float64), np.asarray(tgt["image"], np.float64)
    enc, dp = p["model"]["backbone"], p["aux"]["adda"]
    coeff = 0.5  # warm start at i = 0 is lo
    f_s, f_t = _encode(enc, xs), _encode(enc, xt)  # M_s = M_t = the pretrained encoder at the switch
    d, backward = _disc(dp, np.concatenate([f_s, f_t]))
    loss, g_s, g_t = _l_d(d[:B], d[B:])
    g_disc, g_f = backward(np.concatenate([g_s, g_t]))
    want_enc = _sgd(enc, _encoder_grads(xt, -coeff * g_f[B:]), weight)  # reversed; M_s gets no gradient
    _close(state2.params["model"]["backbone"], want_enc)
    _close(state2.params["aux"]["adda"], _sgd(dp, g_disc, weight))
    assert _same(state2.params["model"]["head"], state1.params["model"]["head"])  # C frozen, bit-identical
    np.testing.assert_allclose(float(metrics["loss/adda"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), weight * loss, rtol=1e-5)
    assert float(metrics["loss/adda/grl_coeff"]) == pytest.approx(coeff)
    # the snapshot is the encoder at the switch exactly, and never moves after
    assert _same(state2.term_states["adda"]["source_encoder"], {"backbone": state1.params["model"]["backbone"]})
    state3, _ = step(state2, src, tgt, jax.random.key(2))
    assert _same(state3.term_states["adda"]["source_encoder"], state2.term_states["adda"]["source_encoder"])
    assert _same(state3.params["model"]["head"], state1.params["model"]["head"])
    assert not _same(state3.params["model"]["backbone"], state2.params["model"]["backbone"])
    assert traces[0] == 1  # both phases in one compiled step


def test_inverted_label_adaptation_is_two_sub_steps_matching_numpy():
    spec = f"cross_entropy + adda(pretrain_steps=1, hidden_size={HIDDEN}, adversarial=inverted)"
    state0, src, tgt, step, traces = _setup(spec, optax.sgd(LR))
    state1, _ = step(state0, src, tgt, jax.random.key(0))
    state2, metrics = step(state1, src, tgt, jax.random.key(1))
    p = _f64(state1.params)
    xs, xt = np.asarray(src["image"], np.float64), np.asarray(tgt["image"], np.float64)
    enc, dp = p["model"]["backbone"], p["aux"]["adda"]
    f_s, f_t = _encode(enc, xs), _encode(enc, xt)
    d, backward = _disc(dp, np.concatenate([f_s, f_t]))  # sub-step 1: D on L_D
    loss_d, g_s, g_t = _l_d(d[:B], d[B:])
    dp_new = _sgd(dp, backward(np.concatenate([g_s, g_t]))[0])
    d_t, backward_t = _disc(dp_new, f_t)  # sub-step 2: M_t on BCE(D'(f_t), 1), the updated D
    loss_m = np.mean(np.logaddexp(0, -d_t))
    _, g_ft = backward_t(-_sigmoid(-d_t) / B)
    _close(state2.params["aux"]["adda"], dp_new)
    _close(state2.params["model"]["backbone"], _sgd(enc, _encoder_grads(xt, g_ft)))
    assert _same(state2.params["model"]["head"], state1.params["model"]["head"])
    np.testing.assert_allclose(float(metrics["loss/adda"]), loss_d, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss/adda/mapping_loss"]), loss_m, rtol=1e-5)
    assert traces[0] == 1


@pytest.mark.parametrize("reset", [True, False])
def test_optimizer_state_is_reset_at_the_switch_and_the_head_slots_are_left(reset):
    spec = f"cross_entropy + adda(pretrain_steps=2, hidden_size={HIDDEN}, lo=0.5, reset_optimizer={reset})"
    state, src, tgt, step, _ = _setup(spec, optax.sgd(LR, momentum=0.9), total=4)
    for k in range(2):
        state, _ = step(state, src, tgt, jax.random.key(k))
    before = state.opt_state[0].trace
    after, _ = step(state, src, tgt, jax.random.key(2))
    trace = after.opt_state[0].trace
    if reset:  # a fresh state: C's slots zero (and left so), M's trace its first adaptation gradient alone
        assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(trace["model"]["head"]))
    else:
        assert _same(trace["model"]["head"], before["model"]["head"]) and any(
            np.any(np.asarray(x)) for x in jax.tree.leaves(before["model"]["head"]))
    assert _same(after.params["model"]["head"], state.params["model"]["head"])


def test_trainer_is_chosen_by_name():
    method = parse_method("cross_entropy + adda")
    assert get_trainer("auto", method) is make_adda_step
    with pytest.raises(LossError, match="needs trainer 'adda'"):
        resolve_trainer("standard", method)


@pytest.mark.parametrize("spec,total,message", [
    ("cross_entropy + adda(pretrain_steps=0)", 10, "pretrain_steps must be an integer >= 1, got 0"),
    ("cross_entropy + adda(pretrain_steps=10)", 10, "pretrain_steps must be < steps"),
    ("cross_entropy + adda(pretrain_steps=12)", 10, "pretrain_steps must be < steps"),
    ("cross_entropy - 1.0*adda(pretrain_steps=2)", 10, "weight .* must be a finite number > 0, got -1.0"),
    ("cross_entropy + adda(pretrain_steps=2, adversarial=minimax)", 10, "adversarial must be one of grl, inverted"),
    ("cross_entropy + adda(pretrain_steps=2, hidden_size=0)", 10, "hidden_size must be an integer >= 1"),
    ("cross_entropy + adda(pretrain_steps=2, alpha=0.0)", 10, "alpha must be a finite number > 0"),
    ("cross_entropy + adda(pretrain_steps=2)@linear", 10, "takes no weight schedule"),
    ("adda(pretrain_steps=2)", 10, "write the method as 'cross_entropy \\+ adda'"),
])
def test_bad_setups_fail_in_one_line(spec, total, message):
    with pytest.raises(LossError, match=message) as err:
        make_adda_step(MODEL, parse_method(spec), optax.sgd(LR), total)
    assert "\n" not in str(err.value)


def test_bad_domains_and_dtype_fail_in_one_line():
    method = parse_method("cross_entropy + adda(pretrain_steps=2)")
    with pytest.raises(LossError, match="one labelled source to one unlabelled target"):
        make_adda_step(MODEL, method, optax.sgd(LR), 10, num_sources=2)
    with pytest.raises(LossError, match="float32 only"):
        make_adda_step(MODEL, method, optax.sgd(LR), 10, compute_dtype="bfloat16")
    with pytest.raises(LossError, match="pretrain_steps must be < steps"):
        train(ExperimentConfig(method="cross_entropy + adda(pretrain_steps=6)", steps=6, model="lenet",
                               model_kwargs={"channels": (4, 8), "dense": 16}, bottleneck_dim=None, batch_size=8))


def test_runs_by_name_on_digits_compiling_once_and_evaluates_the_adapted_encoder():
    config = ExperimentConfig(
        source="digits/source", target="digits/rotate", method="cross_entropy + adda(pretrain_steps=3, hidden_size=32)",
        steps=6, model="lenet", model_kwargs={"channels": (4, 8), "dense": 16}, bottleneck_dim=None, batch_size=16,
        log_every=1)
    result = train(config)
    assert result.compile_count == 1
    logged = [h for h in result.history if "loss" in h]
    assert [h["loss/adda/phase"] for h in logged] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["loss/adda"]) for h in logged)
    state = result.state
    snapshot = state.term_states["adda"]["source_encoder"]
    current = {k: v for k, v in state.params["model"].items() if k != "head"}
    assert jax.tree.structure(snapshot) == jax.tree.structure(current) and not _same(snapshot, current)
    exp = build(config)
    assert evaluate_state(exp, state)["target_test_accuracy"] == result.metrics["target_test_accuracy"]
    x = exp.targets[0].split("test").arrays[exp.input_key][:64]
    adapted = exp.model.apply({"params": state.params["model"], **state.model_state}, x)[0]
    source = exp.model.apply({"params": {**snapshot, "head": state.params["model"]["head"]}, **state.model_state}, x)[0]
    assert not np.allclose(np.asarray(adapted), np.asarray(source))  # evaluation's model is C(M_t), not C(M_s)
