"""DANN / CDANN over training environments: loss and gradients against a NumPy float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.dann_envs import class_balance_weights
from da_framework.losses.registry import DomainView, LossError, LossInputs, get_loss
from da_framework.train.loop import train

K, N, D, C = 3, 4, 5, 4  # environments, examples per environment, feature width, classes


def _inputs(z: np.ndarray, y: np.ndarray) -> LossInputs:
    logits = jnp.zeros((K * N, C))
    views = tuple(DomainView(i, True, jnp.asarray(z[i * N:(i + 1) * N]), logits[i * N:(i + 1) * N], jnp.asarray(y[i * N:(i + 1) * N]))
                  for i in range(K))
    views += (DomainView(K, False, jnp.zeros((N, D)), jnp.zeros((N, C))),)
    return LossInputs(source_features=jnp.asarray(z), target_features=jnp.zeros((N, D)), source_logits=logits,
                      target_logits=jnp.zeros((N, C)), source_labels=jnp.asarray(y), progress=jnp.float32(0.5),
                      key=jax.random.key(0), domains=views)


def _np_loss(params: dict, z: np.ndarray, y: np.ndarray, conditional: bool) -> float:
    """DomainBed's AbstractDANN discriminator loss in float64 (torch's MLP: Linear-ReLU-Linear-ReLU-Linear)."""
    h = z.astype(np.float64) + (np.asarray(params["class_embedding"], np.float64)[y] if conditional else 0.0)
    disc = params["discriminator"]
    layers = sorted(disc, key=lambda k: int(k.split("_")[1]))
    for i, name in enumerate(layers):
        h = h @ np.asarray(disc[name]["kernel"], np.float64) + np.asarray(disc[name]["bias"], np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    env = np.repeat(np.arange(K), N)
    logp = h - h.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(env)), env]
    if not conditional:
        return float(ce.mean())
    counts = np.bincount(y, minlength=C)
    weights = 1.0 / (counts[y] * (y.max() + 1))
    return float((weights * ce).sum())


@pytest.mark.parametrize("name, conditional", [("dann_envs", False), ("cdann_envs", True)])
def test_loss_and_feature_gradient_match_a_float64_reference(name, conditional):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(K * N, D)).astype(np.float32)
    y = np.array([0, 1, 1, 2] * K, np.int32)  # class 3 absent: C in the weights is max(y) + 1 = 3, as torch's one_hot
    lam = 0.7
    term = get_loss(name).term(dann_lambda=lam, mlp_width=6)
    state = term.init(jax.random.key(1), _inputs(z, y))
    loss = float(term.apply(state, _inputs(z, y))[0])
    params = jax.tree.map(np.asarray, state.params)
    assert loss == pytest.approx(_np_loss(params, z, y, conditional), rel=1e-5)
    # the featurizer sees -lambda times the gradient of the discriminator loss (central differences in float64)
    g = np.asarray(jax.grad(lambda zz: term.apply(state, _inputs(zz, y))[0])(jnp.asarray(z)))
    eps, fd = 1e-5, np.zeros_like(z, np.float64)
    for idx in np.ndindex(*z.shape):
        up, down = z.astype(np.float64), z.astype(np.float64)
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (_np_loss(params, up, y, conditional) - _np_loss(params, down, y, conditional)) / (2 * eps)
    np.testing.assert_allclose(g, -lam * fd, rtol=1e-3, atol=1e-6)
    # the discriminator descends the same loss: its gradient is the plain one, not reversed (output bias, by differences)
    last = sorted(params["discriminator"], key=lambda k: int(k.split("_")[1]))[-1]
    gd = jax.grad(lambda p: term.apply(type(state)(params=p, state=state.state), _inputs(z, y))[0])(state.params)
    fd_b = []
    for j in range(K):
        pu, pd = jax.tree.map(np.array, params), jax.tree.map(np.array, params)
        pu["discriminator"][last]["bias"] = pu["discriminator"][last]["bias"].astype(np.float64)
        pd["discriminator"][last]["bias"] = pd["discriminator"][last]["bias"].astype(np.float64)
        pu["discriminator"][last]["bias"][j] += eps
        pd["discriminator"][last]["bias"][j] -= eps
        fd_b.append((_np_loss(pu, z, y, conditional) - _np_loss(pd, z, y, conditional)) / (2 * eps))
    np.testing.assert_allclose(np.asarray(gd["discriminator"][last]["bias"]), fd_b, rtol=1e-3, atol=1e-6)


def test_class_balance_weights_by_hand():
    w = np.asarray(class_balance_weights(jnp.array([0, 0, 2, 2, 2]), 5))
    np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9], rtol=1e-6)  # counts (2, 3), C = max + 1 = 3


def test_one_environment_is_refused():
    term = get_loss("dann_envs").term()
    z = jnp.zeros((N, D))
    one = LossInputs(source_features=z, target_features=z, source_logits=jnp.zeros((N, C)), target_logits=jnp.zeros((N, C)),
                     source_labels=jnp.zeros((N,), jnp.int32), progress=jnp.float32(0), key=jax.random.key(0))
    with pytest.raises(LossError, match="at least 2 training environments"):
        term.init(jax.random.key(0), one)


@pytest.mark.parametrize("method", ["cross_entropy + dann_envs", "cross_entropy + cdann_envs(mlp_width=16)"])
def test_trains_by_name_over_three_environments(method):
    config = ExperimentConfig(source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method=method, steps=2,
                              batch_size=8, optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1,
                              eval_batch_size=256, model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    key = method.split("+ ")[1].split("(")[0]
    logged = [h[f"loss/{key}"] for h in result.history if f"loss/{key}" in h]
    assert len(logged) == 2 and np.isfinite(logged).all()
    assert logged[0] == pytest.approx(np.log(3), abs=0.3)  # a fresh 3-way discriminator is near chance
    assert result.compile_count == 1
