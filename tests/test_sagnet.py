"""SagNet: DomainBed's three updates on a tiny MLP against a NumPy float64 re-derivation (hand-written
forward, central-difference gradients, SGD / Adam by hand), the errors, and a short run by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError
from da_framework.losses.sagnet import randomization_draws
from da_framework.methods.sagnet import make_sagnet_step
from da_framework.models.registry import make_model
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.trainers import get_trainer

N, H, C, LR, W_ADV = 6, 4, 3, 0.1, 0.7
MODEL = make_model("mlp", C, None, hidden=(H,))  # F: relu(x W1 + b1); C: Dense(H -> C)
METHOD = f"sagnet(sag_w_adv={W_ADV})"
NAMES = ("W1", "b1", "Wc", "bc", "Ws", "bs")


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (N, 2, 2, 1)).astype(np.float32)
    y = rng.integers(0, C, N).astype(np.int32)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}, {"image": jnp.asarray(x[:2] + 3.0)}


def _state(tx):
    src, tgt = _batch(0)
    init = jax.jit(lambda k, xs, xt, ys: init_train_state(k, MODEL, parse_method(METHOD), tx, xs, xt, ys))
    state = init(jax.random.key(1), src["image"], tgt["image"], src["label"])  # jitted: one compilation

    def bumped(p):  # in NumPy: no per-shape compilations
        a = np.asarray(p)
        return jnp.asarray(a + 0.3 * np.sin(7.0 * np.arange(a.size).reshape(a.shape) + 1.0), jnp.float32)

    bump = jax.tree.map(bumped, state.params)
    return state.replace(params=bump, opt_state=tx.init(bump)), src, tgt  # non-zero biases everywhere


def _np(state) -> dict[str, np.ndarray]:
    m, s = state.params["model"], state.params["aux"]["sagnet"]
    d = m["backbone"]["Dense_0"]
    return {k: np.asarray(v, np.float64) for k, v in zip(
        NAMES, (d["kernel"], d["bias"], m["head"]["kernel"], m["head"]["bias"], s["kernel"], s["bias"]))}


def _stats(f):
    mean = f.mean(1, keepdims=True)
    var = f.var(1, keepdims=True, ddof=1)  # torch.var: unbiased
    return mean, var, (f - mean) / np.sqrt(var + 1e-5)


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _ce(z, y):
    return float(-np.mean(_log_softmax(z)[np.arange(len(y)), y]))


def _feat(p, x):
    return np.maximum(x @ p["W1"] + p["b1"], 0.0)


def _content_loss(p, x, y, alpha, perm):
    mean, var, normed = _stats(_feat(p, x))
    mean2 = alpha * mean + (1 - alpha) * mean[perm]
    var2 = alpha * var + (1 - alpha) * var[perm]
    return _ce((normed * np.sqrt(var2 + 1e-5) + mean2) @ p["Wc"] + p["bc"], y)


def _style_logits(p, x, frozen_content):
    mean, var, _ = _stats(_feat(p, x))
    return (frozen_content * np.sqrt(var + 1e-5) + mean) @ p["Ws"] + p["bs"]


def _grad(fn, p, names, h=1e-6):
    """Central differences of fn(p) over the entries of p[name] for each name."""
    out = {}
    for n in names:
        g = np.zeros_like(p[n])
        for i in np.ndindex(p[n].shape):
            hi, lo = {**p, n: p[n].copy()}, {**p, n: p[n].copy()}
            hi[n][i] += h
            lo[n][i] -= h
            g[i] = (fn(hi) - fn(lo)) / (2 * h)
        out[n] = g
    return out


class _Opt:
    """SGD or torch's Adam (betas 0.9, 0.999, eps 1e-8) with one moment pair per parameter and a given t."""

    def __init__(self, kind):
        self.kind, self.m, self.v = kind, {}, {}

    def step(self, p, grads, t):
        p = dict(p)
        for n, g in grads.items():
            if self.kind == "sgd":
                p[n] = p[n] - LR * g
                continue
            self.m[n] = 0.9 * self.m.get(n, 0.0) + 0.1 * g
            self.v[n] = 0.999 * self.v.get(n, 0.0) + 0.001 * g * g
            denom = np.sqrt(self.v[n]) / np.sqrt(1 - 0.999 ** t) + 1e-8
            p[n] = p[n] - LR / (1 - 0.9 ** t) * self.m[n] / denom
        return p


def _sagnet_np(p, x, y, draws, opt, t):
    """DomainBed's SagNet.update with the three sub-steps' draws; returns (params, L_c, L_s, L_adv)."""
    (a0, q0), (_, q1), (_, q2) = draws
    l_c = _content_loss(p, x, y, a0, q0)
    p = opt.step(p, _grad(lambda r: _content_loss(r, x, y, a0, q0), p, ("W1", "b1", "Wc", "bc")), t)
    frozen1 = _stats(_feat(p, x))[2][q1]  # the permuted content is detached: held at its value
    l_s = _ce(_style_logits(p, x, frozen1), y)
    p = opt.step(p, _grad(lambda r: _ce(_style_logits(r, x, frozen1), y), p, ("Ws", "bs")), t)
    frozen2 = _stats(_feat(p, x))[2][q2]

    def adv(r):
        return -W_ADV * float(np.mean(_log_softmax(_style_logits(r, x, frozen2))))

    l_adv = adv(p)
    p = opt.step(p, _grad(adv, p, ("W1", "b1")), t)
    return p, l_c, l_s, l_adv


@pytest.mark.parametrize("kind,steps", [("sgd", 1), ("adam", 2)])
def test_sagnet_updates_match_a_numpy_rederivation(kind, steps):
    tx = optax.sgd(LR) if kind == "sgd" else optax.adam(LR)
    state, src, tgt = _state(tx)
    step = jax.jit(make_sagnet_step(MODEL, parse_method(METHOD), tx, 10))
    ref, opt = _np(state), _Opt(kind)
    for t in range(1, steps + 1):
        src, tgt = _batch(t)
        key = jax.random.key(10 + t)
        draws = [tuple(np.asarray(a, np.float64) if i == 0 else np.asarray(a) for i, a in
                       enumerate(randomization_draws(k, N)[:2])) for k in jax.random.split(key, 3)]
        x = np.asarray(src["image"], np.float64).reshape(N, -1)
        ref, l_c, l_s, l_adv = _sagnet_np(ref, x, np.asarray(src["label"]), draws, opt, t)
        state, metrics = step(state, src, tgt, key)
        got = _np(state)
        for n in NAMES:
            np.testing.assert_allclose(got[n], ref[n], rtol=2e-4, atol=2e-6, err_msg=f"{n} after step {t}")
        np.testing.assert_allclose([float(metrics[f"loss/sagnet/{k}"]) for k in ("content", "style", "adversarial")],
                                   [l_c, l_s, l_adv], rtol=1e-5)
    assert int(state.step) == steps
    if kind == "adam":  # one shared counter, advanced once per training step
        assert [int(c) for c in jax.tree.leaves(state.opt_state) if np.ndim(c) == 0] == [steps]


def test_sagnet_draws_differ_across_keys_and_permute():
    (a1, p1, _), (a2, p2, _) = randomization_draws(jax.random.key(0), 64), randomization_draws(jax.random.key(1), 64)
    assert sorted(np.asarray(p1).tolist()) == list(range(64)) and not np.array_equal(p1, p2)
    assert a1.shape == (64, 1) and 0.0 <= float(a1.min()) and float(a1.max()) < 1.0 and not np.allclose(a1, a2)


def test_sagnet_is_chosen_by_name_and_refuses_bad_setups():
    tx = optax.adam(LR)
    assert get_trainer("auto", parse_method("sagnet")) is make_sagnet_step
    with pytest.raises(LossError, match="sag_w_adv must be a finite number >= 0, got -1.0"):
        parse_method("sagnet(sag_w_adv=-1.0)").stateful_terms()
    with pytest.raises(LossError, match="write the method as 'sagnet' alone"):
        make_sagnet_step(MODEL, parse_method("cross_entropy + sagnet"), tx, 10)
    with pytest.raises(LossError, match="float32 only"):
        make_sagnet_step(MODEL, parse_method("sagnet"), tx, 10, compute_dtype="bfloat16")
    deep = make_model("mlp", C, None, hidden=(H,), head_hidden=(8,))
    with pytest.raises(LossError, match="must be one linear layer"):
        make_sagnet_step(deep, parse_method("sagnet"), tx, 10)


def test_sagnet_runs_by_name_over_three_source_environments():
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method="sagnet", steps=3, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=256,
        model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    logged = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    for k in ("loss", "loss/sagnet/content", "loss/sagnet/style", "loss/sagnet/adversarial"):
        assert np.isfinite([h[k] for h in logged]).all(), k
    assert {f"source_val_accuracy/rdigits/{a}" for a in (15, 30, 45)} <= set(result.metrics)
    assert set(result.state.params["aux"]) == {"sagnet"} and result.compile_count == 1
