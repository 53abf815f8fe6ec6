"""The alternating DANN / CDANN trainer against a NumPy float64 re-derivation of DomainBed's ``AbstractDANN.update``.

A linear featurizer (z = x W1 + b1), a linear head and DomainBed's smallest discriminator MLP
(Linear-ReLU-Linear, ``mlp_depth=2``), with torch's Adam (betas (beta1, 0.9), L2 weight decay)
written out; gradients by hand (no penalty) or by central differences of the float64 objective
(with DomainBed's gradient penalty).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError
from da_framework.methods.dann_alternating import is_discriminator_step, make_dann_alt_step
from da_framework.models.classifier import Classifier, flatten_features
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.trainers import get_trainer, resolve_trainer

K, B, C, D, W = 3, 4, 3, 3, 5  # environments, examples per environment, classes, feature width, discriminator width
HP = {"dann_lambda": 0.7, "lr_d": 0.05, "lr_g": 0.02, "weight_decay_d": 0.01, "weight_decay_g": 0.001, "beta1": 0.5,
      "mlp_width": W, "mlp_depth": 2}


class LinearFeaturizer(nn.Module):
    """z = flatten(x) @ W1 + b1."""

    width: int = D

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Linear features of the flattened inputs."""
        return nn.Dense(self.width)(flatten_features(x))


MODEL = Classifier(LinearFeaturizer(), C)


def _spec(name: str, **extra) -> str:
    hp = {**HP, **extra}
    return f"cross_entropy + {name}(" + ", ".join(f"{k}={v!r}" for k, v in hp.items()) + ")"


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.8 * e, 1.0, (B, 2, 2, 1)) for e in range(K)]).astype(np.float32)
    y = rng.integers(0, C, K * B).astype(np.int32)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}, {"image": jnp.asarray(x[:B] + 5.0)}


def _setup(name: str, **extra):
    method = parse_method(_spec(name, **extra))
    tx = optax.sgd(0.1)  # the run's optimiser: not used by this trainer
    src, tgt = _batch(100)
    state = init_train_state(jax.random.key(7), MODEL, method, tx, src["image"], tgt["image"], src["label"],
                             num_sources=K, num_targets=1)
    step = jax.jit(make_dann_alt_step(MODEL, method, tx, 10, num_sources=K, num_targets=1))
    return state, step


def _np_params(state, key: str) -> dict[str, np.ndarray]:
    m, a = state.params["model"], state.params["aux"][key]
    f64 = lambda v: np.array(v, np.float64)
    out = {"W1": f64(m["backbone"]["Dense_0"]["kernel"]), "b1": f64(m["backbone"]["Dense_0"]["bias"]),
           "W2": f64(m["head"]["kernel"]), "b2": f64(m["head"]["bias"]),
           "A1": f64(a["discriminator"]["Dense_0"]["kernel"]), "c1": f64(a["discriminator"]["Dense_0"]["bias"]),
           "A2": f64(a["discriminator"]["Dense_1"]["kernel"]), "c2": f64(a["discriminator"]["Dense_1"]["bias"])}
    if "class_embedding" in a:
        out["E"] = f64(a["class_embedding"])
    return out


GEN, DISC = ("W1", "b1", "W2", "b2"), ("A1", "c1", "A2", "c2", "E")


def _softmax(o):
    e = np.exp(o - o.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _forward(P, x, y, conditional, gp, lam):
    """DomainBed's update in float64: (disc_loss incl. penalty, gen_loss, penalty, intermediates)."""
    env = np.repeat(np.arange(K), B)
    x = x.reshape(len(x), -1)
    z = x @ P["W1"] + P["b1"]
    logits = z @ P["W2"] + P["b2"]
    h = z + P["E"][y] if conditional else z
    a = h @ P["A1"] + P["c1"]
    r = np.maximum(a, 0.0)
    o = r @ P["A2"] + P["c2"]
    p = _softmax(o)
    ce = -np.log(p[np.arange(len(env)), env])
    if conditional:  # y_counts = one_hot(all_y).sum(0): max(y) + 1 wide
        counts = np.bincount(y)
        w = 1.0 / (counts[y] * len(counts))
    else:
        w = np.full(len(env), 1.0 / len(env))
    onehot_env = np.eye(K)[env]
    input_grad = (((p - onehot_env) @ P["A2"].T) * (a > 0)) @ P["A1"].T  # of the summed CE w.r.t. h
    penalty = float(np.mean(np.sum(input_grad**2, 1)))
    disc = float(np.sum(w * ce)) + gp * penalty
    q = _softmax(logits)
    cls = float(np.mean(-np.log(q[np.arange(len(y)), y])))
    return disc, cls - lam * disc, penalty, (x, z, h, a, r, p, q, w, onehot_env)


def _hand_grads(P, x, y, conditional, lam, side):
    """Gradients (no penalty) of DomainBed's disc_loss w.r.t. D, E or of gen_loss w.r.t. featurizer and head."""
    _, _, _, (x, z, h, a, r, p, q, w, onehot_env) = _forward(P, x, y, conditional, 0.0, lam)
    do = w[:, None] * (p - onehot_env)
    da = (do @ P["A2"].T) * (a > 0)
    dh = da @ P["A1"].T
    if side == "disc":
        g = {"A1": h.T @ da, "c1": da.sum(0), "A2": r.T @ do, "c2": do.sum(0)}
        if conditional:
            g["E"] = np.zeros_like(P["E"])
            np.add.at(g["E"], y, dh)
        return g
    dl = (q - np.eye(C)[y]) / len(y)
    dz = dl @ P["W2"].T - lam * dh
    return {"W1": x.T @ dz, "b1": dz.sum(0), "W2": z.T @ dl, "b2": dl.sum(0)}


def _fd_grads(P, x, y, conditional, gp, lam, side, eps=1e-6):
    """Central differences of the float64 objective (disc_loss for D/E, gen_loss for featurizer/head)."""
    which = 0 if side == "disc" else 1
    g = {}
    for name in (DISC if side == "disc" else GEN):
        if name not in P:
            continue
        g[name] = np.zeros_like(P[name])
        for idx in np.ndindex(*P[name].shape):
            up, down = {k: v.copy() for k, v in P.items()}, {k: v.copy() for k, v in P.items()}
            up[name][idx] += eps
            down[name][idx] -= eps
            g[name][idx] = (_forward(up, x, y, conditional, gp, lam)[which]
                            - _forward(down, x, y, conditional, gp, lam)[which]) / (2 * eps)
    return g


class _TorchAdam:
    """torch.optim.Adam(lr, betas=(beta1, 0.9), eps=1e-8, weight_decay) over a dict of arrays."""

    def __init__(self, lr, weight_decay, beta1):
        self.lr, self.wd, self.b1, self.t, self.m, self.v = lr, weight_decay, beta1, 0, {}, {}

    def step(self, P, grads):
        self.t += 1
        for k, g in grads.items():
            g = g + self.wd * P[k]
            self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * g
            self.v[k] = 0.9 * self.v.get(k, 0.0) + 0.1 * g * g
            denom = np.sqrt(self.v[k]) / np.sqrt(1 - 0.9**self.t) + 1e-8
            P[k] = P[k] - self.lr / (1 - self.b1**self.t) * self.m[k] / denom


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb))


def _run_against_reference(name, conditional, gp, updates, grads_of):
    state, step = _setup(name, grad_penalty=gp)
    P = _np_params(state, name)
    lam = HP["dann_lambda"]
    disc_opt = _TorchAdam(HP["lr_d"], HP["weight_decay_d"], HP["beta1"])
    gen_opt = _TorchAdam(HP["lr_g"], HP["weight_decay_g"], HP["beta1"])
    for u in range(updates):
        src, tgt = _batch(u)
        x, y = np.asarray(src["image"], np.float64), np.asarray(src["label"])
        side = "disc" if (u + 1) % 2 < 1 else "gen"  # DomainBed: update_count += 1, then count % (1 + d) < d
        disc_loss, gen_loss, penalty, _ = _forward(P, x, y, conditional, gp, lam)
        grads = grads_of(P, x, y, conditional, gp, lam, side)
        (disc_opt if side == "disc" else gen_opt).step(P, grads)
        new, metrics = step(state, src, tgt, jax.random.key(u))
        got = _np_params(new, name)
        for k in P:
            np.testing.assert_allclose(got[k], P[k], rtol=2e-5, atol=2e-6, err_msg=f"update {u + 1} ({side}): {k}")
        assert float(metrics[f"loss/{name}/disc_step"]) == (side == "disc")
        np.testing.assert_allclose(float(metrics["loss"]), disc_loss if side == "disc" else gen_loss, rtol=1e-5)
        np.testing.assert_allclose(float(metrics[f"loss/{name}/disc_loss"]), disc_loss, rtol=1e-5)
        np.testing.assert_allclose(float(metrics[f"loss/{name}/grad_penalty"]), penalty if gp else 0.0, rtol=1e-4)
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-4)
        # the side this sub-step does not train: parameters and optimiser state bit-identical
        frozen, trained = ("model", "aux") if side == "disc" else ("aux", "model")
        assert _leaves_equal(new.params[frozen], state.params[frozen])
        assert not _leaves_equal(new.params[trained], state.params[trained])
        idle, busy = ("gen_opt", "disc_opt") if side == "disc" else ("disc_opt", "gen_opt")
        assert _leaves_equal(new.term_states[name][idle], state.term_states[name][idle])
        assert not _leaves_equal(new.term_states[name][busy], state.term_states[name][busy])
        assert _leaves_equal(new.opt_state, state.opt_state)  # the run's optimiser is not used
        state = new
    assert int(state.step) == updates
    return state


@pytest.mark.parametrize("name,conditional", [("dann_alt", False), ("cdann_alt", True)])
def test_four_alternating_updates_match_domainbed(name, conditional):
    # generator, discriminator, generator, discriminator: each Adam takes two steps, so magnitudes matter
    state = _run_against_reference(name, conditional, 0.0, 4, lambda P, x, y, c, gp, lam, side:
                                   _hand_grads(P, x, y, c, lam, side))
    counts = [int(c) for c in jax.tree.leaves(state.term_states[name]) if np.ndim(c) == 0]
    assert counts == [2, 2]  # disc_opt and gen_opt each stepped twice


@pytest.mark.parametrize("name,conditional", [("dann_alt", False), ("cdann_alt", True)])
def test_gradient_penalty_matches_domainbed(name, conditional):
    # DomainBed's penalty: squared norm of d(sum CE)/d(disc input), averaged over examples, in both sub-steps
    _run_against_reference(name, conditional, 0.3, 2, _fd_grads)


def test_hand_gradients_agree_with_central_differences():
    P = _np_params(_setup("cdann_alt")[0], "cdann_alt")
    src, _ = _batch(3)
    x, y = np.asarray(src["image"], np.float64), np.asarray(src["label"])
    for side in ("disc", "gen"):
        hand, fd = _hand_grads(P, x, y, True, 0.7, side), _fd_grads(P, x, y, True, 0.0, 0.7, side)
        for k in hand:
            np.testing.assert_allclose(hand[k], fd[k], rtol=1e-5, atol=1e-8)


def test_cdann_embedding_moves_only_on_discriminator_steps_and_is_class_conditional():
    state, step = _setup("cdann_alt", weight_decay_d=0.0)
    src, tgt = _batch(0)
    src = {"image": src["image"], "label": jnp.asarray(np.array([0, 1] * (K * B // 2), np.int32))}  # class 2 absent
    e0 = np.asarray(state.params["aux"]["cdann_alt"]["class_embedding"])
    after_gen, _ = step(state, src, tgt, jax.random.key(0))
    assert np.array_equal(np.asarray(after_gen.params["aux"]["cdann_alt"]["class_embedding"]), e0)
    after_disc, _ = step(after_gen, src, tgt, jax.random.key(1))
    e1 = np.asarray(after_disc.params["aux"]["cdann_alt"]["class_embedding"])
    assert not np.allclose(e1[:2], e0[:2])  # the rows of the batch's classes move
    assert np.array_equal(e1[2], e0[2])  # an absent class's row has zero gradient (and no weight decay here)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_schedule_is_domainbeds_update_count_test(d):
    flags = [bool(is_discriminator_step(jnp.int32(s), d)) for s in range(12)]
    assert flags == [(s + 1) % (1 + d) < d for s in range(12)]
    if d == 2:
        assert flags[:6] == [True, False, True, True, False, True]


def test_d_steps_per_g_step_drives_the_trainer():
    state, step = _setup("dann_alt", d_steps_per_g_step=2)
    flags = []
    for s in range(6):
        src, tgt = _batch(s)
        state, metrics = step(state, src, tgt, jax.random.key(s))
        flags.append(float(metrics["loss/dann_alt/disc_step"]))
    assert flags == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]


def test_trainer_is_chosen_by_name_and_refuses_bad_setups():
    tx = optax.sgd(0.1)
    build = lambda spec, **kw: make_dann_alt_step(MODEL, parse_method(spec), tx, 10, **{"num_sources": K, **kw})
    assert get_trainer("auto", parse_method("cross_entropy + dann_alt")) is make_dann_alt_step
    assert get_trainer("auto", parse_method("cross_entropy + cdann_alt")) is make_dann_alt_step
    with pytest.raises(LossError, match="needs trainer 'dann_alt'"):
        resolve_trainer("standard", parse_method("cross_entropy + dann_alt"))
    for spec in ["dann_alt", "cross_entropy + dann_alt + cdann_alt", "cross_entropy + coral_envs + dann_alt"]:
        with pytest.raises(LossError, match="write the method as 'cross_entropy \\+ dann_alt'"):
            build(spec)
    with pytest.raises(LossError, match="needs at least 2 training environments, got 1"):
        build("cross_entropy + dann_alt", num_sources=1)
    with pytest.raises(LossError, match="float32 only"):
        build("cross_entropy + cdann_alt", compute_dtype="bfloat16")
    bad = {"lr_d=0.0": "lr_d must be a finite number > 0", "lr_g=-1.0": "lr_g must be", "beta1=1.0": "beta1 must be",
           "d_steps_per_g_step=0": "d_steps_per_g_step must be an integer >= 1",
           "d_steps_per_g_step=1.5": "d_steps_per_g_step must be an integer", "grad_penalty=-0.1": "grad_penalty must",
           "weight_decay_d=-1.0": "weight_decay_d must", "weight_decay_g=1e999": "weight_decay_g must be a finite",
           "mlp_depth=1": "mlp_depth must be an integer >= 2", "mlp_width=0": "mlp_width must",
           "dann_lambda=0.0": "dann_lambda must"}
    for setting, message in bad.items():
        for name in ("dann_alt", "cdann_alt"):
            with pytest.raises(LossError, match=f"{name}: {message}"):
                build(f"cross_entropy + {name}({setting})")


@pytest.mark.parametrize("method", ["cross_entropy + dann_alt(mlp_width=16)", "cross_entropy + cdann_alt(mlp_width=16)"])
def test_trains_by_name_over_three_environments(method):
    config = ExperimentConfig(source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method=method, steps=4,
                              batch_size=8, optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1,
                              eval_batch_size=256, model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    key = method.split("+ ")[1].split("(")[0]
    logged = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4]
    assert [h[f"loss/{key}/disc_step"] for h in logged] == [0.0, 1.0, 0.0, 1.0]  # generator first, as DomainBed
    assert np.isfinite([h["loss"] for h in logged]).all()
    assert logged[0][f"loss/{key}/disc_loss"] == pytest.approx(np.log(3), abs=0.3)  # a fresh 3-way discriminator
    assert {f"source_val_accuracy/rdigits/{a}" for a in (15, 30, 45)} <= set(result.metrics)
    assert result.compile_count == 1
