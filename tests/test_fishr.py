"""Fishr (DomainBed's form): closed-form per-example head gradients against autodiff, the penalty and
two steps of its EMA against a NumPy float64 re-derivation, the anneal and reset, errors, a run by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.classification import cross_entropy
from da_framework.losses.fishr import fishr_penalty, gradient_variance, moving_average, per_example_head_grads
from da_framework.losses.registry import DomainView, LossError, LossInputs, get_loss
from da_framework.models.registry import make_model
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.step import optimizer_resets

K, N, D, C = 3, 5, 4, 3


def _envs(seed: int):
    rng = np.random.default_rng(seed)
    feats = [rng.normal(0.3 * e, 1.0 + 0.4 * e, (N, D)) for e in range(K)]
    logits = [rng.normal(0.0, 1.5, (N, C)) for _ in range(K)]
    labels = [rng.integers(0, C, N) for _ in range(K)]
    return feats, logits, labels


def _inputs(feats, logits, labels, progress=0.0, params=None) -> LossInputs:
    views = tuple(DomainView(e, True, jnp.asarray(f, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.int32))
                  for e, (f, z, y) in enumerate(zip(feats, logits, labels)))
    cat = lambda arrays, dt: jnp.concatenate([jnp.asarray(a, dt) for a in arrays])
    return LossInputs(source_features=cat(feats, jnp.float32), target_features=jnp.zeros((2, D)),
                      source_logits=cat(logits, jnp.float32), target_logits=jnp.zeros((2, C)),
                      source_labels=cat(labels, jnp.int32), progress=jnp.float32(progress), key=jax.random.key(0),
                      params=params, domains=views)


def _np_variance(f: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example gradients by an explicit loop (torch layout: weight (C, D), then bias), their population variance."""
    rows = []
    for i in range(len(y)):
        p = np.exp(z[i] - z[i].max())
        p /= p.sum()
        g = p - np.eye(C)[y[i]]
        rows.append(np.concatenate([np.outer(g, f[i]).ravel(), g]))
    rows = np.array(rows)
    return ((rows - rows.mean(0)) ** 2).mean(0)


def _ours(v: np.ndarray) -> np.ndarray:
    """Torch layout (weight (C, D) flattened, then bias) -> flax layout (kernel (D, C) flattened, then bias)."""
    return np.concatenate([v[: C * D].reshape(C, D).T.ravel(), v[C * D:]])


def _np_penalty(vs: list[np.ndarray]) -> float:
    mean = np.mean(vs, axis=0)
    return float(np.mean([np.mean((v - mean) ** 2) for v in vs]))  # l2_between_dicts (a mean) / num_domains


def test_penalty_of_a_hand_case():
    # environment means of [1, 2] and [3, 6] are [2, 4]; squared gaps 1, 4, 1, 4 -> mean 2.5
    assert float(fishr_penalty(jnp.array([[1.0, 2.0], [3.0, 6.0]]))) == pytest.approx(2.5)
    assert float(fishr_penalty(jnp.array([[1.0, 2.0], [1.0, 2.0]]))) == 0.0


def test_closed_form_head_gradients_match_autodiff_through_the_model():
    model = make_model("mlp", C, None, hidden=(D,))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(N, 2, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, C, N), jnp.int32)
    params = model.init(jax.random.key(0), x)["params"]
    logits, feats = model.apply({"params": params}, x)

    def one_loss(p, xi, yi):
        return cross_entropy(model.apply({"params": p}, xi[None])[0], yi[None])

    auto = jax.vmap(jax.grad(one_loss), in_axes=(None, 0, 0))(params, x, y)["head"]
    dkernel, dbias = per_example_head_grads(feats, logits, y)
    np.testing.assert_allclose(np.asarray(dkernel), np.asarray(auto["kernel"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dbias), np.asarray(auto["bias"]), rtol=1e-5, atol=1e-7)

    # the penalty's gradient w.r.t. every model parameter (double backprop in DomainBed) matches too
    xs = [x, x[::-1] * 2.0 + 0.5]

    def penalty_closed(p):
        out = [model.apply({"params": p}, xe) for xe in xs]
        return fishr_penalty(jnp.stack([gradient_variance(f, z, y) for z, f in out]))

    def penalty_auto(p):
        vs = []
        for xe in xs:
            g = jax.vmap(jax.grad(one_loss), in_axes=(None, 0, 0))(p, xe, y)["head"]
            flat = jnp.concatenate([g["kernel"].reshape(N, -1), g["bias"]], axis=1)
            vs.append(jnp.mean((flat - flat.mean(0)) ** 2, 0))
        return fishr_penalty(jnp.stack(vs))

    assert float(penalty_closed(params)) == pytest.approx(float(penalty_auto(params)), rel=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(penalty_closed)(params)), jax.tree.leaves(jax.grad(penalty_auto)(params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-8)


def test_two_steps_of_ema_and_penalty_match_a_float64_reference():
    ema, lam = 0.9, 50.0
    term = get_loss("fishr").term(fishr_lambda=lam, fishr_ema=ema, fishr_penalty_anneal_iters=2, steps_of=4)
    first, second = _envs(0), _envs(1)
    state = term.init(jax.random.key(0), _inputs(*first))
    assert state.state.shape == (K, D * C + C) and not np.any(np.asarray(state.state))
    # step 0 (progress 0: count 0 < 2, weight 0) and step 2 (progress 0.5: count 2, weight lam)
    loss1, stored1, m1 = term.apply(state, _inputs(*first, progress=0.0))
    loss2, stored2, m2 = term.apply(state._replace(state=stored1), _inputs(*second, progress=0.5))

    v1 = [_np_variance(f, z, y) for f, z, y in zip(*first)]
    v2 = [_np_variance(f, z, y) for f, z, y in zip(*second)]
    stored_np1 = [(1 - ema) * v for v in v1]                       # MovingAverage: previous data 0 on the first update
    value1 = [s / (1 - ema) for s in stored_np1]                   # oneminusema_correction: = v1
    stored_np2 = [ema * s + (1 - ema) * v for s, v in zip(stored_np1, v2)]
    value2 = [s / (1 - ema) for s in stored_np2]
    for e in range(K):  # the state holds the kernel's (D, C) entries, then the bias
        np.testing.assert_allclose(np.asarray(stored1[e]), _ours(stored_np1[e]), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(np.asarray(stored2[e]), _ours(stored_np2[e]), rtol=1e-5, atol=1e-9)
    assert float(m1["penalty"]) == pytest.approx(_np_penalty(value1), rel=1e-5)
    assert float(loss1) == 0.0  # before the anneal step the weight is 0 (DomainBed's Fishr), the EMA still moves
    assert float(m2["penalty"]) == pytest.approx(_np_penalty(value2), rel=1e-5)
    assert float(loss2) == pytest.approx(lam * _np_penalty(value2), rel=1e-5)


def test_state_layout_is_kernel_then_bias():
    f, z, y = (a[0] for a in _envs(2))
    v = np.asarray(gradient_variance(jnp.asarray(f, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(y)))
    np.testing.assert_allclose(v, _ours(_np_variance(f, z, y)), rtol=1e-5, atol=1e-9)


def test_moving_average_gradient_reaches_only_the_current_variance():
    stored, current = jnp.array([0.2, 0.4]), jnp.array([1.0, 3.0])
    value, new = moving_average(stored, current, 0.95)
    np.testing.assert_allclose(np.asarray(new), 0.95 * np.array([0.2, 0.4]) + 0.05 * np.array([1.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(value), np.asarray(new) / 0.05, rtol=1e-6)
    d_stored, d_current = jax.grad(lambda s, c: jnp.sum(moving_average(s, c, 0.95)[0]), argnums=(0, 1))(stored, current)
    np.testing.assert_array_equal(np.asarray(d_stored), 0.0)
    np.testing.assert_allclose(np.asarray(d_current), 1.0, rtol=1e-6)  # (1 - ema) / (1 - ema)


def test_the_anneal_step_resets_adam():
    assert optimizer_resets(parse_method("cross_entropy + fishr")) == [(1500.0, 5001.0, None)]
    assert optimizer_resets(parse_method("cross_entropy + fishr(fishr_penalty_anneal_iters=7, steps_of=20)")) == [(7.0, 20.0, None)]


@pytest.mark.parametrize("spec, match", [
    ("fishr(fishr_ema=1.0)", "fishr_ema must be in"),
    ("fishr(fishr_lambda=-1.0)", "fishr_lambda must be a finite number >= 0"),
    ("fishr(fishr_penalty_anneal_iters=-3)", "fishr_penalty_anneal_iters must be"),
    ("fishr(steps_of=0)", "steps_of must be > 0"),
    ("fishr(lambda_=1.0)", "has no hyper-parameter 'lambda_'"),
])
def test_bad_hyperparameters_are_one_line_errors(spec, match):
    with pytest.raises(LossError, match=match):
        parse_method("cross_entropy + " + spec)


def test_bad_inputs_are_refused():
    term = get_loss("fishr").term()
    feats, logits, labels = _envs(0)
    with pytest.raises(LossError, match="at least 2 training environments"):
        term.init(jax.random.key(0), _inputs(feats[:1], logits[:1], labels[:1]))
    state = term.init(jax.random.key(0), _inputs(feats, logits, labels))
    fused = {"image_head": {"kernel": jnp.zeros((D, C)), "bias": jnp.zeros(C)}}
    with pytest.raises(LossError, match="one Dense 'head'"):
        term.apply(state, _inputs(feats, logits, labels, params=fused))
    with pytest.raises(LossError, match="needs at least 2 examples"):
        term.apply(state, _inputs([f[:1] for f in feats], [z[:1] for z in logits], [y[:1] for y in labels]))


def test_fishr_trains_by_name_over_three_rdigits_environments():
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0",
        method="cross_entropy + fishr(fishr_penalty_anneal_iters=2, steps_of=3)", steps=3, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=256,
        model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    logged = [h for h in result.history if "loss/fishr" in h]
    assert len(logged) == 3
    penalties = [h["loss/fishr/penalty"] for h in logged]
    assert np.isfinite(penalties).all() and min(penalties) > 0
    assert logged[0]["loss/fishr"] == 0.0 and logged[2]["loss/fishr"] == pytest.approx(1000.0 * penalties[2], rel=1e-5)
    assert np.asarray(result.state.term_states["fishr"]).shape == (3, 16 * 10 + 10)
    assert result.compile_count == 1
