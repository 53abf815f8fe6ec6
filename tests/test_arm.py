"""ARM-CML: one update of a tiny ARM model (2-channel context net, linear featurizer) against a NumPy float64
re-derivation (hand-written convs, BatchNorm and group means, central-difference gradients, SGD by hand),
the test-time forward, the support-size errors, and a short run by name."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.errors import UserError
from da_framework.losses.registry import LossError
from da_framework.methods.arm import make_arm_step
from da_framework.models.registry import make_model
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.trainers import get_trainer

K, B, S, H, C, LR = 2, 3, 3, 3, 3, 0.2  # environments, support size = batch per environment, image side, ...
MODEL = make_model("arm", C, None, featurizer="mlp", featurizer_kwargs={"hidden": (H,)}, support_size=B,
                   context_channels=2)
TX = optax.sgd(LR)
APPLY = jax.jit(MODEL.apply, static_argnames="train")


def _batches(seed: int):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.5 * e, 1.0, (B, S, S, 1)) for e in range(K)]).astype(np.float32)
    y = rng.integers(0, C, K * B).astype(np.int32)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}, {"image": jnp.asarray(x[:B] + 5.0)}


@functools.lru_cache(maxsize=1)
def _state():
    tx = TX
    src, tgt = _batches(0)
    method = parse_method("arm")
    init = jax.jit(lambda k, xs, xt, ys: init_train_state(k, MODEL, method, tx, xs, xt, ys, num_sources=K))
    state = init(jax.random.key(4), src["image"], tgt["image"], src["label"])  # jitted: one compilation

    def bumped(p):  # in NumPy: no per-shape compilations
        a = np.asarray(p)
        return jnp.asarray(a + 0.2 * np.sin(3.0 * np.arange(a.size).reshape(a.shape) + 0.5), jnp.float32)

    bump = jax.tree.map(bumped, state.params)
    return state.replace(params=bump, opt_state=tx.init(bump)), src, tgt


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v, np.float64)
    return out


def _conv(x, k, b):
    """'same' 5x5 cross-correlation, NHWC."""
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    patches = np.stack([xp[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(5) for j in range(5)], axis=3)
    return patches.reshape(*x.shape[:3], -1) @ k.reshape(-1, k.shape[-1]) + b  # (di, dj, c) order as k


def _forward(p, stats, x, train):
    """ARM.predict in NumPy: (logits, new running stats)."""
    c, new_stats = x, {}
    for i in range(2):
        c = _conv(c, p[f"backbone/context_net/Conv_{i}/kernel"], p[f"backbone/context_net/Conv_{i}/bias"])
        name = f"backbone/context_net/BatchNorm_{i}"
        if train:
            mean, var = c.mean((0, 1, 2)), c.var((0, 1, 2))
            n = c.size // c.shape[-1]
            new_stats[f"{name}/mean"] = 0.9 * stats[f"{name}/mean"] + 0.1 * mean
            new_stats[f"{name}/var"] = 0.9 * stats[f"{name}/var"] + 0.1 * var * n / (n - 1)
        else:
            mean, var = stats[f"{name}/mean"], stats[f"{name}/var"]
        c = np.maximum((c - mean) / np.sqrt(var + 1e-5) * p[f"{name}/scale"] + p[f"{name}/bias"], 0.0)
    c = _conv(c, p["backbone/context_net/Conv_2/kernel"], p["backbone/context_net/Conv_2/bias"])
    c = np.repeat(c.reshape(len(x) // B, B, *c.shape[1:]).mean(1), B, axis=0)  # support-group means
    z = np.concatenate([x, c], -1).reshape(len(x), -1)
    phi = np.maximum(z @ p["backbone/phi/Dense_0/kernel"] + p["backbone/phi/Dense_0/bias"], 0.0)
    return phi @ p["head/kernel"] + p["head/bias"], new_stats


def _ce(z, y):
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def test_arm_update_matches_a_numpy_rederivation():
    tx = TX
    state, src, tgt = _state()
    p, stats = _flat(state.params["model"]), _flat(state.model_state["batch_stats"])
    x, y = np.asarray(src["image"], np.float64), np.asarray(src["label"])
    step = jax.jit(make_arm_step(MODEL, parse_method("arm"), tx, 10, num_sources=K))
    new, metrics = step(state, src, tgt, jax.random.key(0))
    logits, want_stats = _forward(p, stats, x, train=True)
    np.testing.assert_allclose(float(metrics["loss"]), _ce(logits, y), rtol=1e-5)
    got, h = _flat(new.params["model"]), 1e-6
    for name, value in p.items():
        grad = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            hi, lo = {**p, name: value.copy()}, {**p, name: value.copy()}
            hi[name][i] += h
            lo[name][i] -= h
            grad[i] = (_ce(_forward(hi, stats, x, True)[0], y) - _ce(_forward(lo, stats, x, True)[0], y)) / (2 * h)
        np.testing.assert_allclose(got[name], value - LR * grad, rtol=1e-4, atol=2e-6, err_msg=name)
    got_stats = _flat(new.model_state["batch_stats"])
    for name, value in want_stats.items():  # statistics of the source batch only (the test batch is not forwarded)
        np.testing.assert_allclose(got_stats[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_arm_test_time_forward_uses_running_statistics_and_eval_batch_groups():
    state, _, _ = _state()
    stats = jax.tree.map(lambda s: s + 0.1, state.model_state["batch_stats"])  # not the init values
    x = np.asarray(_batches(3)[0]["image"], np.float64)  # 2 groups of B
    variables = {"params": state.params["model"], "batch_stats": stats}
    logits, _ = APPLY(variables, jnp.asarray(x, jnp.float32), train=False)
    want, _ = _forward(_flat(state.params["model"]), _flat(stats), x, train=False)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-5)
    swap = [3, 1, 2, 0, 4, 5]  # examples 0 and 3 change groups
    swapped, _ = APPLY(variables, jnp.asarray(x[swap], jnp.float32), train=False)
    assert not np.allclose(np.asarray(swapped)[swap], want, atol=1e-3)  # a prediction depends on its group
    with pytest.raises(UserError, match="arm: a batch of 4 examples does not split into support groups of 3"):
        MODEL.apply(variables, jnp.asarray(x[:4], jnp.float32), train=False)


def test_arm_is_chosen_by_name_and_refuses_bad_setups():
    tx = TX
    assert get_trainer("auto", parse_method("arm")) is make_arm_step
    with pytest.raises(LossError, match="write the method as 'arm' alone"):
        make_arm_step(MODEL, parse_method("cross_entropy + arm"), tx, 10, num_sources=K)
    with pytest.raises(LossError, match="arm: needs the ARM model"):
        make_arm_step(make_model("mlp", C, None), parse_method("arm"), tx, 10, num_sources=K)
    with pytest.raises(LossError, match="float32 only"):
        make_arm_step(MODEL, parse_method("arm"), tx, 10, compute_dtype="bfloat16", num_sources=K)
    state, src, tgt = _state()
    with pytest.raises(LossError, match="batch_size 2 != model_kwargs support_size 3"):
        make_arm_step(MODEL, parse_method("arm"), tx, 10, num_sources=3)(state, src, tgt, jax.random.key(0))
    with pytest.raises(UserError, match="support_size must be an integer >= 1, got 0"):
        make_model("arm", C, None, featurizer="mlp", support_size=0).init(jax.random.key(0), src["image"])


def test_arm_runs_by_name_over_three_source_environments():
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method="arm", steps=3, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=512,
        model="arm", model_kwargs={"featurizer": "mlp", "featurizer_kwargs": {"hidden": (16,)}, "support_size": 8,
                                   "context_channels": 2})
    result = train(config)
    logged = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert np.isfinite([h["loss/arm"] for h in logged]).all()
    assert {f"source_val_accuracy/rdigits/{a}" for a in (15, 30, 45)} <= set(result.metrics)
    means = result.state.model_state["batch_stats"]["backbone"]["context_net"]["BatchNorm_0"]["mean"]
    assert np.abs(np.asarray(means)).sum() > 0  # the context net's running statistics moved
