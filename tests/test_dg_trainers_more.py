"""SANDMask, IGA and RSC trainers: one SGD update of a tiny model against a NumPy float64
re-derivation of DomainBed's ``update``, hand-computed masks, the errors, and short runs by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError
from da_framework.methods.iga import make_iga_step
from da_framework.methods.rsc import make_rsc_step, rsc_mask
from da_framework.methods.sandmask import make_sandmask_step, sand_mask
from da_framework.models.registry import make_model
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.trainers import get_trainer

K, B, C, D, H, LR = 3, 5, 3, 4, 6, 0.1
LINEAR = make_model("mlp", C, None, hidden=())  # logits = flatten(x) @ W + b
TWO_LAYER = make_model("mlp", C, None, hidden=(H,))  # features relu(x @ W1 + b1), logits features @ W2 + b2


def _batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.7 * e, 1.0, (B, 2, 2, 1)) for e in range(K)]).astype(np.float32)
    y = rng.integers(0, C, K * B).astype(np.int32)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}, {"image": jnp.asarray(x[:B] + 3.0)}


def _state(model, method: str, tx, seed: int = 0):
    """A train state whose parameters are fixed float32 draws (every bias non-zero)."""
    src, tgt = _batches()
    state = init_train_state(jax.random.key(3), model, parse_method(method), tx, src["image"], tgt["image"],
                             src["label"])
    rng = np.random.default_rng(100 + seed)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0.0, 0.7, p.shape), jnp.float32), state.params)
    return state.replace(params=params, opt_state=tx.init(params)), src, tgt


def _leaves(state) -> list[np.ndarray]:
    """The model's parameters in float64: [W, b] (linear) or [W1, b1, W2, b2] (two layers)."""
    p = state.params["model"]
    layers = ([p["backbone"]["Dense_0"]] if "backbone" in p else []) + [p["head"]]
    return [np.asarray(layer[n], np.float64) for layer in layers for n in ("kernel", "bias")]


def _envs(src) -> list[tuple[np.ndarray, np.ndarray]]:
    x = np.asarray(src["image"], np.float64).reshape(K, B, -1)
    y = np.asarray(src["label"]).reshape(K, B)
    return [(x[e], y[e]) for e in range(K)]


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def _ce(z, y) -> float:
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def _ce_grad(params, x, y):
    """F.cross_entropy(x @ W + b, y) and its gradient [dW, db], by hand."""
    w, b = params
    z = x @ w + b
    dz = (_softmax(z) - np.eye(C)[y]) / len(y)
    return _ce(z, y), [x.T @ dz, dz.sum(0)]


def _close(state, expected, rtol=1e-4, atol=1e-6):
    for got, want in zip(_leaves(state), expected):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ---- SANDMask ----------------------------------------------------------------------------------

def _sand_mask_np(g, tau, k):
    """DomainBed's SANDMask.mask_grads on a (K, ...) float64 stack, with torch's inf/NaN rules."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = g.var(0, ddof=1)
        var[np.isnan(var)] = 1e-17
        mask = np.tanh(k * (1.0 / var) * (np.abs(np.sign(g).mean(0)) - tau))
        mask = np.maximum(mask, 0.0)  # NaN stays NaN, as torch.max
        mask[np.isnan(mask)] = 1e-17
    return mask * g.mean(0) / (1e-10 + mask.sum() / mask.size), mask


def test_sand_mask_follows_domainbed_on_a_hand_computed_case():
    # entry 0: equal gradients (variance 0, agreement 1); 1: opposite (variance 2, agreement 0); 2: zeros
    g = jnp.asarray([[2.0, 1.0, 0.0], [2.0, -1.0, 0.0]])
    out, mask = sand_mask(g, tau=0.5, k=1.0)  # 1/var = inf: tanh(+inf) = 1, tanh(-inf) -> 0; tanh(-0.25) -> 0
    np.testing.assert_allclose(mask, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out, [2.0 / (1e-10 + 1 / 3), 0.0, 0.0], rtol=1e-6)
    _, mask = sand_mask(g, tau=1.0, k=1.0)  # inf * 0 = NaN -> 1e-17 at entry 0
    np.testing.assert_allclose(mask, [1e-17, 0.0, 0.0], rtol=1e-6)
    _, mask = sand_mask(g, tau=0.0, k=1.0)  # entry 2: inf * 0 again; entry 1: tanh(0) = 0
    np.testing.assert_allclose(mask, [1.0, 0.0, 1e-17], rtol=1e-6)
    out, mask = sand_mask(jnp.asarray([[1.0, 3.0], [3.0, 1.0], [2.0, -1.0]]), tau=0.2, k=0.5)
    ref, ref_mask = _sand_mask_np(np.asarray([[1.0, 3.0], [3.0, 1.0], [2.0, -1.0]]), 0.2, 0.5)
    np.testing.assert_allclose(mask, [np.tanh(0.5 / 1.0 * 0.8), np.tanh(0.5 / 4.0 * (1 / 3 - 0.2))], rtol=1e-6)
    np.testing.assert_allclose(ref_mask, mask, rtol=1e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize("tau,k", [(0.5, 0.05), (0.2, 10.0), (1.0, 10.0)])
def test_sandmask_update_matches_domainbed(tau, k):
    method = f"sandmask(tau={tau}, k={k})"
    tx = optax.sgd(LR)
    state, src, tgt = _state(LINEAR, method, tx)
    step = jax.jit(make_sandmask_step(LINEAR, parse_method(method), tx, 10, num_sources=K))
    new, metrics = step(state, src, tgt, jax.random.key(0))
    params = _leaves(state)
    per_env = [_ce_grad(params, x, y) for x, y in _envs(src)]
    grads, masks = zip(*[_sand_mask_np(np.stack([pe[1][t] for pe in per_env]), tau, k) for t in range(2)])
    all_masks = np.concatenate([m.ravel() for m in masks])
    if (tau, k) == (0.5, 0.05):
        assert ((all_masks > 0.05) & (all_masks < 0.95)).sum() >= 3  # the smooth part of the mask is exercised
        assert (all_masks == 0).any()
    if tau == 1.0:
        assert np.all(all_masks == 0)  # DomainBed's default tau: no entry survives, a zero update
    _close(new, [p - LR * g for p, g in zip(params, grads)])
    np.testing.assert_allclose(float(metrics["loss"]), np.mean([pe[0] for pe in per_env]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss/sandmask/mask_mean"]), all_masks.mean(), rtol=1e-4, atol=1e-7)


# ---- IGA ---------------------------------------------------------------------------------------

def _flat(parts) -> np.ndarray:
    return np.concatenate([p.ravel() for p in parts])


def _unflat(v) -> list[np.ndarray]:
    return [v[:D * C].reshape(D, C), v[D * C:]]


def _iga_penalty(params, envs) -> float:
    grads = [_flat(_ce_grad(params, x, y)[1]) for x, y in envs]
    mean = np.mean(grads, axis=0)
    return float(sum(((g - mean) ** 2).sum() for g in grads))


def _iga_np(params, envs, penalty):
    """IGA's objective gradient for the linear softmax model in closed form: the mean risk's
    gradient plus penalty * sum_e 2 H_e (g_e - g_bar), H_e u written out through the softmax Jacobian."""
    w, _ = params
    per_env = [_ce_grad(params, x, y) for x, y in envs]
    mean_grad = [np.mean([pe[1][t] for pe in per_env], axis=0) for t in range(2)]
    pen_grad = [np.zeros_like(p) for p in params]
    for (x, y), (_, g) in zip(envs, per_env):
        u_w, u_b = (2 * (g[t] - mean_grad[t]) for t in range(2))
        p = _softmax(x @ w + params[1])
        a = x @ u_w + u_b  # (b, C): <u, d g / d z_i>, per example
        dz = (p * a - p * (p * a).sum(1, keepdims=True)) / len(y)  # (diag(p) - p p^T) a / b
        pen_grad = [pen_grad[0] + x.T @ dz, pen_grad[1] + dz.sum(0)]
    value = _iga_penalty(params, envs)
    return [m + penalty * q for m, q in zip(mean_grad, pen_grad)], pen_grad, np.mean([pe[0] for pe in per_env]), value


def test_iga_penalty_gradient_reference_matches_finite_differences():
    state, src, _ = _state(LINEAR, "iga", optax.sgd(LR))
    params, envs = _leaves(state), _envs(src)
    _, pen_grad, _, _ = _iga_np(params, envs, 1.0)
    theta, eps = _flat(params), 1e-5
    fd = np.array([(_iga_penalty(_unflat(theta + eps * e), envs) - _iga_penalty(_unflat(theta - eps * e), envs))
                   / (2 * eps) for e in np.eye(theta.size)])
    np.testing.assert_allclose(_flat(pen_grad), fd, rtol=1e-6, atol=1e-9)
    assert np.abs(fd).max() > 1e-3  # the penalty has a gradient here


@pytest.mark.parametrize("penalty,weight", [(3.0, 1.0), (0.0, 1.0), (3.0, 0.5)])
def test_iga_update_matches_the_float64_closed_form(penalty, weight):
    method = f"{weight}*iga(penalty={penalty})"
    tx = optax.sgd(LR)
    state, src, tgt = _state(LINEAR, method, tx)
    step = jax.jit(make_iga_step(LINEAR, parse_method(method), tx, 10, num_sources=K))
    new, metrics = step(state, src, tgt, jax.random.key(0))
    params, envs = _leaves(state), _envs(src)
    grads, pen_grad, mean_loss, value = _iga_np(params, envs, penalty)
    if penalty:
        share = np.linalg.norm(penalty * _flat(pen_grad)) / np.linalg.norm(_flat(grads) - penalty * _flat(pen_grad))
        assert share > 0.3  # the second-order part moves the update, so a first-order step would fail
    _close(new, [p - LR * weight * g for p, g in zip(params, grads)])
    np.testing.assert_allclose(float(metrics["loss"]), weight * mean_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss/iga/penalty"]), value, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["loss/iga/objective"]), weight * (mean_loss + penalty * value), rtol=1e-5)


# ---- RSC ---------------------------------------------------------------------------------------

def _rsc_np(params, x, y, f_drop, b_drop):
    """DomainBed's RSC.update on the two-layer model in float64: (new params, loss, mask, margins)."""
    w1, b1, w2, b2 = params
    pre = x @ w1 + b1
    f = np.maximum(pre, 0.0)
    o = np.eye(C)[y]
    g = o @ w2.T  # d sum(logits * o) / d f: row i is W2[:, y_i]
    pct_f = np.percentile(g, (1 - f_drop) * 100, axis=1)[:, None]
    mask_f = g < pct_f
    changes = (_softmax(f @ w2 + b2) * o).sum(1) - (_softmax((f * mask_f) @ w2 + b2) * o).sum(1)
    pct_b = np.percentile(changes, (1 - b_drop) * 100)
    mask_b = changes < pct_b
    mask = (mask_f | mask_b[:, None]).astype(np.float64)
    fm = f * mask
    z = fm @ w2 + b2
    dz = (_softmax(z) - o) / len(y)
    dfm = dz @ w2.T * mask * (pre > 0)
    grads = [x.T @ dfm, dfm.sum(0), fm.T @ dz, dz.sum(0)]
    margins = (np.abs(g - pct_f).min(), np.abs(changes - pct_b).min())  # how far from a tie each rule is
    return [p - LR * q for p, q in zip(params, grads)], _ce(z, y), mask, mask_b, margins


def test_rsc_mask_on_a_hand_computed_case_with_ties():
    w = jnp.asarray([[1.0, 0.0], [2.0, 0.0], [3.0, -1.0]])
    f, y = jnp.ones((2, 3)), jnp.asarray([0, 1])  # G rows: W[:, 0] = (1, 2, 3), W[:, 1] = (0, 0, -1)
    # f factor 0: the threshold is each row's maximum and the comparison strict, so both tied maxima of row 1 go;
    # b factor 1: the threshold is the smallest change, which no example is below: every example is muted
    np.testing.assert_array_equal(rsc_mask(lambda z: z @ w, f, y, 0.0, 1.0), [[1, 1, 0], [0, 0, 1]])
    # changes: sigmoid(7) - sigmoid(3) = 0.047 > sigmoid(-7) - sigmoid(-4) = -0.017; b factor 0: only the largest is muted
    np.testing.assert_array_equal(rsc_mask(lambda z: z @ w, f, y, 0.0, 0.0), [[1, 1, 0], [1, 1, 1]])


@pytest.mark.parametrize("f_drop,b_drop", [(1 / 3, 1 / 3), (0.25, 0.45)])
def test_rsc_update_matches_domainbed(f_drop, b_drop):
    method = f"rsc(rsc_f_drop_factor={f_drop}, rsc_b_drop_factor={b_drop})"
    tx = optax.sgd(LR)
    state, src, tgt = _state(TWO_LAYER, method, tx)
    step = jax.jit(make_rsc_step(TWO_LAYER, parse_method(method), tx, 10, num_sources=K))
    new, metrics = step(state, src, tgt, jax.random.key(0))
    x = np.asarray(src["image"], np.float64).reshape(K * B, -1)
    expected, loss, mask, mask_b, margins = _rsc_np(_leaves(state), x, np.asarray(src["label"]), f_drop, b_drop)
    assert min(margins) > 1e-4  # no value sits on a percentile, so float32 and float64 masks agree
    assert 0 < mask_b.sum() < K * B  # some examples are muted, others kept whole
    assert 0 < (1 - mask).sum()
    _close(new, expected)
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss/rsc/muted_fraction"]), 1 - mask.mean(), rtol=1e-6)
    unmasked = _rsc_np(_leaves(state), x, np.asarray(src["label"]), f_drop, 1.0)  # b factor 1: nothing muted
    assert not np.allclose(unmasked[0][2], expected[2])  # the mask changed the update


# ---- errors and runs by name -------------------------------------------------------------------

BUILDERS = [("sandmask", make_sandmask_step), ("iga", make_iga_step), ("rsc", make_rsc_step)]
BAD = {
    "sandmask": ["sandmask(tau=1.5)", "sandmask(tau=-0.1)", "sandmask(k=0.0)", "sandmask(k=-1.0)", "sandmask(k=True)"],
    "iga": ["iga(penalty=-1.0)", "iga(penalty='big')"],
    "rsc": ["rsc(rsc_f_drop_factor=1.5)", "rsc(rsc_b_drop_factor=-0.1)"],
}


@pytest.mark.parametrize("name,builder", BUILDERS)
def test_trainers_are_chosen_by_name_and_refuse_bad_setups(name, builder):
    tx = optax.adam(LR)
    assert get_trainer("auto", parse_method(name)) is builder
    with pytest.raises(LossError, match=f"write the method as '{name}' alone"):
        builder(TWO_LAYER, parse_method(f"cross_entropy + {name}"), tx, 10, num_sources=K)
    with pytest.raises(LossError, match="float32 only"):
        builder(TWO_LAYER, parse_method(name), tx, 10, compute_dtype="bfloat16", num_sources=K)
    for spec in BAD[name]:
        with pytest.raises(LossError, match=f"^{name}: .* must be ") as err:
            builder(TWO_LAYER, parse_method(spec), tx, 10, num_sources=K)
        assert "\n" not in str(err.value)
    if name == "rsc":  # RSC pools the environments: one source is enough
        builder(TWO_LAYER, parse_method(name), tx, 10, num_sources=1)
        with pytest.raises(LossError, match="rsc: needs a Classifier"):
            builder(object(), parse_method(name), tx, 10, num_sources=K)
    else:
        with pytest.raises(LossError, match=f"{name}: needs at least 2 training environments, got 1"):
            builder(TWO_LAYER, parse_method(name), tx, 10, num_sources=1)


@pytest.mark.parametrize("method", ["sandmask(tau=0.5)", "iga", "rsc"])
def test_trainers_run_by_name_over_three_source_environments(method):
    key = method.split("(")[0]
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method=method, steps=3, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=256,
        model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    logged = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert np.isfinite([h["loss"] for h in logged]).all() and np.isfinite([h[f"loss/{key}"] for h in logged]).all()
    assert {f"source_val_accuracy/rdigits/{a}" for a in (15, 30, 45)} <= set(result.metrics)
    assert result.compile_count == 1
