"""MCD: the discrepancy, masked sub-step updates, the jitted three-step train step, and a short run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.data import get_domain
from da_framework.losses.mcd import SecondClassifier, classifier_discrepancy
from da_framework.losses.registry import LossError
from da_framework.methods.mcd import classifier_mask, make_mcd_step, masked_update
from da_framework.models.registry import make_model
from da_framework.train import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.step import make_train_step
from da_framework.train.trainers import get_trainer, resolve_trainer


def test_discrepancy_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    sm = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    ref = np.mean(np.abs(sm(a) - sm(b)))
    out = classifier_discrepancy(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(float(out), ref, rtol=1e-5)
    assert float(classifier_discrepancy(jnp.asarray(b), jnp.asarray(a))) == pytest.approx(float(out), rel=1e-6)
    assert float(classifier_discrepancy(jnp.asarray(a), jnp.asarray(a))) == 0.0
    with pytest.raises(LossError, match="same shape|widths differ"):
        classifier_discrepancy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


@pytest.fixture(scope="module")
def setup():
    model = make_model("mlp", 3, None, hidden=(8,))
    method = parse_method("cross_entropy + mcd(num_k=2)")
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)).astype(np.float32))
    xt = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)).astype(np.float32) + 0.5)
    ys = jnp.asarray([0, 1, 2, 0, 1, 2])
    return model, method, xs, xt, ys


def _np_softmax(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_masked_update_freezes_params_and_slots(setup):
    model, method, xs, xt, ys = setup
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(optax.linear_schedule(0.1, 0.0, 10), 0.9))
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    params = state.params
    f_mask = classifier_mask(params)
    assert f_mask["model"]["head"]["kernel"] and f_mask["aux"]["mcd"]["Dense_0"]["kernel"]
    assert not any(jax.tree.leaves(f_mask["model"]["backbone"]))
    g_mask = jax.tree.map(lambda m: not m, f_mask)
    grads = jax.tree.map(jnp.ones_like, params)
    # two updates so that momentum slots are non-zero
    p1, o1 = masked_update(tx, grads, state.opt_state, params, jax.tree.map(lambda _: True, f_mask), True)
    p2, o2 = masked_update(tx, grads, o1, p1, f_mask, advance_counters=False)
    assert _leaves_equal(p2["model"]["backbone"], p1["model"]["backbone"])  # G frozen, bit-identical
    assert not _leaves_equal(p2["model"]["head"], p1["model"]["head"])
    assert not _leaves_equal(p2["aux"], p1["aux"])
    trace1, trace2 = o1[1][0].trace, o2[1][0].trace
    assert _leaves_equal(trace2["model"]["backbone"], trace1["model"]["backbone"])  # G's momentum untouched
    assert not _leaves_equal(trace2["model"]["head"], trace1["model"]["head"])
    counts = lambda o: [int(x) for x in jax.tree.leaves(o) if np.ndim(x) == 0]  # noqa: E731
    assert counts(o2) == counts(o1) == [1]  # the schedule counter advanced once, in the first update
    p3, _ = masked_update(tx, grads, o2, p2, g_mask, advance_counters=False)
    assert _leaves_equal(p3["model"]["head"], p2["model"]["head"]) and _leaves_equal(p3["aux"], p2["aux"])
    assert not _leaves_equal(p3["model"]["backbone"], p2["model"]["backbone"])


def test_trainer_is_chosen_by_name_and_never_silently_switched(setup):
    _, method, *_ = setup
    assert get_trainer("auto", method) is make_mcd_step
    assert get_trainer("mcd", method) is make_mcd_step
    assert get_trainer("auto", parse_method("dann")) is make_train_step
    assert resolve_trainer("standard", parse_method("dann")) == "standard"
    with pytest.raises(LossError, match="needs trainer 'mcd'.*set trainer=mcd or auto"):
        resolve_trainer("standard", method)
    with pytest.raises(LossError, match="unknown trainer 'nope'; valid: auto, standard, mcd"):
        resolve_trainer("nope", method)


def test_mcd_step_updates_everything_once(setup):
    model, method, xs, xt, ys = setup
    tx = optax.sgd(0.1, 0.9)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    step = jax.jit(make_mcd_step(model, method, tx, total_steps=10))
    new, metrics = step(state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(1))
    assert int(new.step) == 1
    for part in (("model", "backbone"), ("model", "head"), ("aux", "mcd")):
        assert not _leaves_equal(new.params[part[0]][part[1]], state.params[part[0]][part[1]]), part
    assert jax.tree.structure(new) == jax.tree.structure(state)
    # step A is the ordinary train step of the same method: same metrics, same parameters after it
    plain, plain_metrics = jax.jit(make_train_step(model, method, tx, total_steps=10))(
        state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(1)
    )
    for k in ("loss", "loss/cross_entropy", "loss/mcd", "source_train_accuracy", "grad_norm"):
        np.testing.assert_allclose(metrics[k], plain_metrics[k], rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(metrics["loss"], metrics["loss/cross_entropy"] + metrics["loss/mcd"], rtol=1e-6)
    # step B's discrepancy is measured at the parameters after step A: NumPy softmaxes of F1, F2 there
    params_a = plain.params
    logits, feats = model.apply({"params": params_a["model"]}, jnp.concatenate([xs, xt]), train=True)
    logits2 = SecondClassifier().apply({"params": params_a["aux"]["mcd"]}, (feats, logits))
    p1, p2 = (_np_softmax(z[len(xs):]) for z in (logits, logits2))
    np.testing.assert_allclose(metrics["loss/mcd_discrepancy_b"], np.mean(np.abs(p1 - p2)), rtol=1e-5)
    with pytest.raises(LossError, match="no 'mcd' term"):
        make_mcd_step(model, parse_method("dann"), tx, 10)


def test_step_c_lowers_discrepancy(setup):
    # with only step C (huge weight on it through many repeats) the discrepancy on target falls
    model, _, xs, xt, ys = setup
    method = parse_method("0.0*cross_entropy + 0.0*mcd(num_k=8)")
    tx = optax.sgd(0.5)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    step = jax.jit(make_mcd_step(model, method, tx, total_steps=10))
    _, metrics = step(state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(1))
    assert float(metrics["loss/mcd_discrepancy_c"]) < float(metrics["loss/mcd_discrepancy_b"])


@pytest.mark.slow  # a real train() run on the embedded digits
def test_end_to_end_mcd_run():
    cfg = ExperimentConfig(method="mcd", steps=4, model="lenet", model_kwargs={"channels": (4, 8), "dense": 16},
                           bottleneck_dim=None, batch_size=16, log_every=2)
    r = train(cfg)
    assert r.compile_count == 1
    logged = [h for h in r.history if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4]
    for h in logged:  # step A's loss is the method's weighted sum: cross_entropy + 1.0*mcd
        assert h["loss"] == pytest.approx(h["loss/cross_entropy"] + h["loss/mcd"], rel=1e-6)
    # the reported accuracy is the final model's (F1, the model's own head), recomputed unpadded
    test = get_domain(cfg.target).split("test").arrays
    model = make_model("lenet", 10, None, channels=(4, 8), dense=16)
    variables = {"params": r.state.params["model"], **r.state.model_state}
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(test["image"]))
    expected = np.mean(np.argmax(np.asarray(logits), -1) == test["label"])
    assert r.metrics["target_test_accuracy"] == pytest.approx(expected, abs=1e-12)
