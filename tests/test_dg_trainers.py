"""MLDG, Fish and ANDMask trainers: one update of a linear model against a NumPy float64
re-derivation of DomainBed's ``update`` (torch's Adam written out), the errors, and short runs by name."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError
from da_framework.methods.andmask import make_andmask_step
from da_framework.methods.fish import make_fish_step
from da_framework.methods.mldg import make_mldg_step, mldg_pairs
from da_framework.models.registry import make_model
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.trainers import get_trainer

K, B, C, LR = 3, 5, 3, 0.1
MODEL = make_model("mlp", C, None, hidden=())  # no hidden layer: logits = flatten(x) @ W + b


def _batches(seed: int):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.7 * e, 1.0, (B, 2, 2, 1)) for e in range(K)]).astype(np.float32)
    y = rng.integers(0, C, K * B).astype(np.int32)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}, {"image": jnp.asarray(x[:B] + 3.0)}


def _state(method: str, tx):
    src, tgt = _batches(0)
    state = init_train_state(jax.random.key(3), MODEL, parse_method(method), tx, src["image"], tgt["image"], src["label"])
    head = state.params["model"]["head"]
    state = state.replace(params={"model": {"head": {"kernel": head["kernel"], "bias": head["kernel"][0] * 0.5}},
                                  "aux": {}})  # a non-zero bias too
    state = state.replace(opt_state=tx.init(state.params))
    return state, src, tgt


def _np_params(state) -> list[np.ndarray]:
    head = state.params["model"]["head"]
    return [np.asarray(head["kernel"], np.float64), np.asarray(head["bias"], np.float64)]


def _envs(src) -> list[tuple[np.ndarray, np.ndarray]]:
    x = np.asarray(src["image"], np.float64).reshape(K, B, -1)
    y = np.asarray(src["label"]).reshape(K, B)
    return [(x[e], y[e]) for e in range(K)]


def _ce_grad(params, x, y):
    """F.cross_entropy(x @ W + b, y) and its gradient (dW, db), by hand."""
    w, b = params
    z = x @ w + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    dz = (p - np.eye(C)[y]) / len(y)
    return loss, [x.T @ dz, dz.sum(0)]


class _TorchAdam:
    """torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0) on a list of arrays."""

    def __init__(self, lr: float):
        self.lr, self.t, self.m, self.v = lr, 0, None, None

    def step(self, params, grads):
        if self.m is None:
            self.m, self.v = [np.zeros_like(g) for g in grads], [np.zeros_like(g) for g in grads]
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = 0.9 * self.m[i] + 0.1 * g
            self.v[i] = 0.999 * self.v[i] + 0.001 * g * g
            denom = np.sqrt(self.v[i]) / np.sqrt(1 - 0.999 ** self.t) + 1e-8
            out.append(p - self.lr / (1 - 0.9 ** self.t) * self.m[i] / denom)
        return out


def _sgd(params, grads, lr=LR):
    return [p - lr * g for p, g in zip(params, grads)]


def _domainbed_pairs(perm, n_meta_test):
    """misc.random_pairs_of_minibatches (n_meta_test=0) / misc.split_meta_train_test, on a given permutation."""
    if n_meta_test == 0:
        return [(perm[k], perm[(k + 1) % K]) for k in range(K)]
    train_, test = perm[:K - n_meta_test], perm[K - n_meta_test:]
    return list(zip(train_, itertools.cycle(test)))


def _mldg_np(params, envs, pairs, beta, inner_opt, warm):
    """DomainBed's MLDG.update: (new params, objective, g); the outer optimiser (kind `inner_opt`)
    has already taken one step on the gradient `warm`, the inner one is fresh."""
    acc = [np.zeros_like(p) for p in params]
    objective = 0.0
    for i, j in pairs:
        li, gi = _ce_grad(params, *envs[i])
        inner = _TorchAdam(LR).step(params, gi) if inner_opt == "adam" else _sgd(params, gi)
        lj, gj = _ce_grad(inner, *envs[j])
        acc = [a + x / K + beta * z / K for a, x, z in zip(acc, gi, gj)]
        objective += li + beta * lj
    if inner_opt == "adam":
        outer = _TorchAdam(LR)
        outer.step(params, warm)
        new = outer.step(params, acc)
    else:
        new = _sgd(params, acc)
    return new, objective / K, acc


def _close(got_state, expected, rtol=1e-4, atol=1e-6):
    for g, e in zip(_np_params(got_state), expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("optimizer,n_meta_test", [("adam", 0), ("sgd", 0), ("adam", 2), ("sgd", 1)])
def test_mldg_update_matches_domainbed(optimizer, n_meta_test):
    beta = 0.7
    tx = optax.adam(LR) if optimizer == "adam" else optax.sgd(LR)
    method = f"mldg(mldg_beta={beta}, n_meta_test={n_meta_test})"
    state, src, tgt = _state(method, tx)
    warm = jax.tree.map(lambda p: jnp.cos(3.0 * p) * 0.1, state.params)  # the outer optimiser is not fresh
    state = state.replace(opt_state=tx.update(warm, state.opt_state, state.params)[1])
    warm = [np.asarray(warm["model"]["head"][k], np.float64) for k in ("kernel", "bias")]
    step = jax.jit(make_mldg_step(MODEL, parse_method(method), tx, 10, num_sources=K))
    params, envs = _np_params(state), _envs(src)
    matched = set()
    for seed in range(4):
        new, metrics = step(state, src, tgt, jax.random.key(seed))
        hits = []
        for perm in itertools.permutations(range(K)):
            ref, objective, acc = _mldg_np(params, envs, _domainbed_pairs(list(perm), n_meta_test), beta, optimizer,
                                          warm)
            if all(np.allclose(g, e, rtol=1e-4, atol=1e-6) for g, e in zip(_np_params(new), ref)):
                hits.append(perm)
                np.testing.assert_allclose(float(metrics["loss"]), objective, rtol=1e-5)
                np.testing.assert_allclose(float(metrics["grad_norm"]), np.sqrt(sum((a * a).sum() for a in acc)), rtol=1e-5)
        pairs = {tuple(sorted(_domainbed_pairs(list(p), n_meta_test))) for p in hits}  # the update is order-free
        assert len(pairs) == 1, (seed, hits)  # exactly one set of pairs reproduces the update
        drawn = mldg_pairs(jax.random.split(jax.random.key(seed))[0], K, n_meta_test)  # the step's pairing key
        key_pairs = tuple(sorted((int(i), int(j)) for i, j in drawn))
        assert pairs == {key_pairs}  # ... and it is the one drawn from the step's key
        matched |= pairs
        assert int(new.step) == 1
    assert len(matched) > 1  # the pairing is random across keys


def _fish_np(params, envs, adam, meta_lr):
    inner = [p.copy() for p in params]
    for x, y in envs:
        loss, g = _ce_grad(inner, x, y)
        inner = adam.step(inner, g)
    return [p + meta_lr * (q - p) for p, q in zip(params, inner)], loss


def test_fish_two_updates_match_domainbed_with_a_persistent_inner_adam():
    meta_lr = 0.3
    tx = optax.adam(LR)
    state, src, tgt = _state(f"fish(meta_lr={meta_lr})", tx)
    step = jax.jit(make_fish_step(MODEL, parse_method(f"fish(meta_lr={meta_lr})"), tx, 10, num_sources=K))
    adam, params = _TorchAdam(LR), _np_params(state)
    for seed in range(2):
        src, tgt = _batches(seed)
        state, metrics = step(state, src, tgt, jax.random.key(seed))
        params, last_loss = _fish_np(params, _envs(src), adam, meta_lr)
        _close(state, params)
        np.testing.assert_allclose(float(metrics["loss"]), last_loss, rtol=1e-5)
    counts = [int(c) for c in jax.tree.leaves(state.opt_state) if np.ndim(c) == 0]
    assert counts == [2 * K]  # the inner optimiser's state persisted: K steps per update


def _andmask_np(params, envs, tau):
    per_env = [_ce_grad(params, x, y) for x, y in envs]
    out, kept, size = [], 0.0, 0
    for t in range(len(params)):
        g = np.stack([pe[1][t] for pe in per_env])
        mask = (np.abs(np.sign(g).mean(0)) >= tau).astype(np.float64)
        out.append(mask * g.mean(0) / (1e-10 + mask.sum() / mask.size))
        kept, size = kept + mask.sum(), size + mask.size
    return out, np.mean([pe[0] for pe in per_env]), kept / size


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_andmask_update_matches_domainbed(tau):
    tx = optax.sgd(LR)
    state, src, tgt = _state(f"andmask(tau={tau})", tx)
    step = jax.jit(make_andmask_step(MODEL, parse_method(f"andmask(tau={tau})"), tx, 10, num_sources=K))
    new, metrics = step(state, src, tgt, jax.random.key(0))
    grads, loss, fraction = _andmask_np(_np_params(state), _envs(src), tau)
    if tau == 1.0:
        assert 0.0 < fraction < 1.0  # the case masks some entries and keeps others
    else:
        assert fraction == 1.0  # |mean sign| >= 1/3 always for K = 3: the mean gradient
    _close(new, _sgd(_np_params(state), grads))
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss/andmask/mask_fraction"]), fraction, rtol=1e-6)


@pytest.mark.parametrize("name,builder", [("mldg", make_mldg_step), ("fish", make_fish_step),
                                          ("andmask", make_andmask_step)])
def test_trainers_are_chosen_by_name_and_refuse_bad_setups(name, builder):
    tx = optax.adam(LR)
    assert get_trainer("auto", parse_method(name)) is builder
    with pytest.raises(LossError, match=f"{name}: needs at least 2 training environments, got 1"):
        builder(MODEL, parse_method(name), tx, 10, num_sources=1)
    with pytest.raises(LossError, match=f"write the method as '{name}' alone"):
        builder(MODEL, parse_method(f"cross_entropy + {name}"), tx, 10, num_sources=K)
    with pytest.raises(LossError, match="float32 only"):
        builder(MODEL, parse_method(name), tx, 10, compute_dtype="bfloat16", num_sources=K)
    bad = {"mldg": ["mldg(n_meta_test=3)", "mldg(mldg_beta=-1.0)"], "fish": ["fish(meta_lr=0.0)"],
           "andmask": ["andmask(tau=1.5)"]}[name]
    for spec in bad:
        with pytest.raises(LossError, match="must be"):
            builder(MODEL, parse_method(spec), tx, 10, num_sources=K)


@pytest.mark.parametrize("method", ["mldg", "fish", "andmask"])
def test_dg_trainers_run_by_name_over_three_source_environments(method):
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method=method, steps=3, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=256,
        model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    logged = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert np.isfinite([h["loss"] for h in logged]).all() and np.isfinite([h[f"loss/{method}"] for h in logged]).all()
    assert {f"source_val_accuracy/rdigits/{a}" for a in (15, 30, 45)} <= set(result.metrics)
    assert result.compile_count == 1
