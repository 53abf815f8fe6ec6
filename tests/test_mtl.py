"""MTL: two standard-step updates of a tiny MTL model against a NumPy float64 re-derivation (hand-written
forward with the moving embeddings, central-difference gradients, SGD by hand), the test-time forward,
the errors, and a short run by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.errors import UserError
from da_framework.losses.registry import LossError
from da_framework.models.registry import make_model
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.step import make_train_step

K, B, H, C, LR, EMA = 3, 4, 3, 3, 0.2, 0.7
MODEL = make_model("mtl", C, None, featurizer="mlp", featurizer_kwargs={"hidden": (H,)})
METHOD = f"mtl(mtl_ema={EMA})"


def _batches(seed: int):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.5 * e, 1.0, (B, 2, 2, 1)) for e in range(K)]).astype(np.float32)
    y = rng.integers(0, C, K * B).astype(np.int32)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}, {"image": jnp.asarray(x[:B] + 2.0)}


def _state(tx):
    src, tgt = _batches(0)
    method = parse_method(METHOD)
    init = jax.jit(lambda k, xs, xt, ys: init_train_state(k, MODEL, method, tx, xs, xt, ys, num_sources=K))
    state = init(jax.random.key(2), src["image"], tgt["image"], src["label"])  # jitted: one compilation

    def bumped(p):  # in NumPy: no per-shape compilations
        a = np.asarray(p)
        return jnp.asarray(a + 0.3 * np.cos(5.0 * np.arange(a.size).reshape(a.shape)), jnp.float32)

    bump = jax.tree.map(bumped, state.params)
    return state.replace(params=bump, opt_state=tx.init(bump))


def _np(state) -> dict[str, np.ndarray]:
    m = state.params["model"]
    d = m["backbone"]["phi"]["Dense_0"]
    return {k: np.asarray(v, np.float64) for k, v in
            zip(("W1", "b1", "Wh", "bh"), (d["kernel"], d["bias"], m["head"]["kernel"], m["head"]["bias"]))}


def _phi(p, x):
    return np.maximum(x @ p["W1"] + p["b1"], 0.0)


def _ce(z, y):
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def _mtl_np(p, envs, memory):
    """DomainBed's MTL.update objective (mean embedding, no noise): (loss, new embeddings)."""
    loss, new = 0.0, []
    for (x, y), old in zip(envs, memory):
        phi = _phi(p, x)
        mu = EMA * phi.mean(0) + (1 - EMA) * old
        loss += _ce(np.concatenate([phi, np.broadcast_to(mu, phi.shape)], 1) @ p["Wh"] + p["bh"], y)
        new.append(mu)
    return loss, np.stack(new)


def _grad(fn, p, h=1e-6):
    out = {}
    for n in p:
        g = np.zeros_like(p[n])
        for i in np.ndindex(p[n].shape):
            hi, lo = {**p, n: p[n].copy()}, {**p, n: p[n].copy()}
            hi[n][i] += h
            lo[n][i] -= h
            g[i] = (fn(hi) - fn(lo)) / (2 * h)
        out[n] = g
    return out


def test_mtl_two_updates_match_a_numpy_rederivation():
    tx = optax.sgd(LR)
    state = _state(tx)
    step = jax.jit(make_train_step(MODEL, parse_method(METHOD), tx, 10, num_sources=K, num_targets=1))
    ref, memory = _np(state), np.zeros((K, H))
    assert np.array_equal(np.asarray(state.term_states["mtl"]), memory)  # explicit state, zeros at the start
    for t in (1, 2):
        src, tgt = _batches(t)
        x = np.asarray(src["image"], np.float64).reshape(K, B, -1)
        envs = [(x[e], np.asarray(src["label"]).reshape(K, B)[e]) for e in range(K)]
        loss, new_memory = _mtl_np(ref, envs, memory)
        grads = _grad(lambda r, envs=envs, memory=memory: _mtl_np(r, envs, memory)[0], ref)
        ref = {n: ref[n] - LR * grads[n] for n in ref}
        memory = new_memory
        state, metrics = step(state, src, tgt, jax.random.key(t))
        got = _np(state)
        for n in ref:
            np.testing.assert_allclose(got[n], ref[n], rtol=1e-4, atol=1e-6, err_msg=f"{n} after step {t}")
        np.testing.assert_allclose(np.asarray(state.term_states["mtl"]), memory, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    assert np.abs(memory).sum() > 0


def test_mtl_model_forward_uses_the_batch_mean_at_test_time():
    state = _state(optax.sgd(LR))
    x = np.asarray(_batches(5)[0]["image"], np.float64)
    logits, feats = MODEL.apply({"params": state.params["model"]}, jnp.asarray(x, jnp.float32), train=False)
    p = _np(state)
    phi = _phi(p, x.reshape(len(x), -1))
    want = np.concatenate([phi, np.broadcast_to(phi.mean(0), phi.shape)], 1) @ p["Wh"] + p["bh"]
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-6)
    assert feats.shape == (len(x), 2 * H)


def test_mtl_refuses_bad_setups():
    with pytest.raises(LossError, match=r"mtl_ema must be a number in \[0, 1\], got 1.5"):
        parse_method("mtl(mtl_ema=1.5)").stateful_terms()
    src, tgt = _batches(0)
    plain = make_model("mlp", C, None, hidden=(H,))
    with pytest.raises(LossError, match="mtl: needs the MTL model"):
        init_train_state(jax.random.key(0), plain, parse_method("mtl"), optax.sgd(LR), src["image"], tgt["image"],
                         src["label"], num_sources=K)
    with pytest.raises(UserError, match="mtl: unknown featurizer 'nope'"):
        make_model("mtl", C, None, featurizer="nope").init(jax.random.key(0), src["image"])


def test_mtl_runs_by_name_over_three_source_environments():
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method="mtl", steps=3, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=64,
        model="mtl", model_kwargs={"featurizer": "mlp", "featurizer_kwargs": {"hidden": (16,)}})
    result = train(config)
    logged = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert np.isfinite([h["loss/mtl"] for h in logged]).all()
    assert {f"source_val_accuracy/rdigits/{a}" for a in (15, 30, 45)} <= set(result.metrics)
    memory = np.asarray(result.state.term_states["mtl"])
    assert memory.shape == (3, 16) and np.abs(memory).sum() > 0
