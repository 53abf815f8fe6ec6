"""FedAvg / FedProx / FedOpt / DP clipping against hand computations and optax itself."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.federated.algorithms import (
    aggregate,
    client_deltas,
    clip_updates,
    per_client_norms,
    proximal_term,
    sample_clients,
    server_optimizer,
    server_update,
    weighted_average,
)


def test_fedavg_of_two_clients_by_hand():
    # global w = (1, 2); client updates w_1 = (3, 2) with n=1, w_2 = (1, 6) with n=3
    g = {"w": jnp.array([1.0, 2.0])}
    clients = {"w": jnp.array([[3.0, 2.0], [1.0, 6.0]])}
    deltas = client_deltas(clients, g)  # (2, 0) and (0, 4)
    delta, _ = aggregate(deltas, jnp.array([1, 3]), jax.random.key(0))
    np.testing.assert_allclose(delta["w"], [0.5, 3.0])  # (1*2 + 3*0)/4, (1*0 + 3*4)/4
    tx = server_optimizer("sgd", 1.0)
    new, _ = server_update(g, tx.init(g), delta, tx)
    np.testing.assert_allclose(new["w"], [1.5, 5.0])  # = (1*w_1 + 3*w_2) / 4


def test_weighted_average_ignores_zero_weight_padding_and_all_zero_is_zero():
    d = {"a": jnp.array([[1.0], [5.0], [100.0]])}
    np.testing.assert_allclose(weighted_average(d, jnp.array([1.0, 1.0, 0.0]))["a"], [3.0])
    np.testing.assert_allclose(weighted_average(d, jnp.zeros(3))["a"], [0.0])


def test_proximal_term_value_and_gradient():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        w = {"a": jnp.asarray(rng.normal(size=(3, 2))), "b": jnp.asarray(rng.normal(size=4))}
        g = {"a": jnp.asarray(rng.normal(size=(3, 2))), "b": jnp.asarray(rng.normal(size=4))}
        mu = 0.3
        ref = 0.5 * mu * sum(np.sum((np.asarray(w[k]) - np.asarray(g[k])) ** 2) for k in w)
        np.testing.assert_allclose(proximal_term(w, g, mu), ref, rtol=1e-6)
        grads = jax.grad(proximal_term)(w, g, mu)
        for k in w:  # d/dw mu/2 ||w - g||^2 = mu (w - g)
            np.testing.assert_allclose(grads[k], mu * (np.asarray(w[k]) - np.asarray(g[k])), rtol=1e-6)
        # the global model is a constant: no gradient flows into it
        gg = jax.grad(lambda g_: proximal_term(w, g_, mu))(g)
        assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(gg))


@pytest.mark.parametrize(
    "name,direct",
    [
        ("sgd", optax.sgd(0.5)),
        ("momentum", optax.sgd(0.5, momentum=0.9)),
        ("adam", optax.adam(0.5, b1=0.9, b2=0.99, eps=1e-3)),
        ("yogi", optax.yogi(0.5, b1=0.9, b2=0.99, eps=1e-3)),
    ],
)
def test_server_optimizers_equal_optax_on_negative_delta(name, direct):
    tx = server_optimizer(name, 0.5, momentum=0.9, b1=0.9, b2=0.99, tau=1e-3)
    rng = np.random.default_rng(1)
    w = {"x": jnp.asarray(rng.normal(size=5), jnp.float32)}
    w_ref, s, s_ref = w, tx.init(w), direct.init(w)
    for _ in range(3):
        delta = {"x": jnp.asarray(rng.normal(size=5), jnp.float32)}
        w, s = server_update(w, s, delta, tx)
        upd, s_ref = direct.update({"x": -delta["x"]}, s_ref, w_ref)
        w_ref = optax.apply_updates(w_ref, upd)
    np.testing.assert_allclose(w["x"], w_ref["x"], rtol=1e-6)


def test_fedadam_first_step_moves_along_the_averaged_update():
    # With bias correction, step 1 of adam is lr * delta / (|delta| + tau): sign of delta.
    tx = server_optimizer("adam", 0.1, tau=1e-8)
    w = {"x": jnp.zeros(3)}
    new, _ = server_update(w, tx.init(w), {"x": jnp.array([2.0, -3.0, 0.5])}, tx)
    np.testing.assert_allclose(new["x"], [0.1, -0.1, 0.1], rtol=1e-5)


def test_clipping_bounds_every_client_norm_and_keeps_small_updates():
    rng = np.random.default_rng(2)
    d = {"a": jnp.asarray(rng.normal(size=(4, 3, 3)) * [[[10.0]], [[0.01]], [[1.0]], [[3.0]]], jnp.float32),
         "b": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}
    clipped, norms = clip_updates(d, 1.0)
    after = per_client_norms(clipped)
    assert np.all(np.asarray(after) <= 1.0 + 1e-5)
    for k in range(4):
        if norms[k] <= 1.0:
            np.testing.assert_allclose(clipped["a"][k], d["a"][k])
        else:  # direction preserved, norm exactly C
            np.testing.assert_allclose(after[k], 1.0, rtol=1e-5)
            np.testing.assert_allclose(clipped["a"][k] * norms[k], d["a"][k], rtol=1e-4, atol=1e-5)
    ref = np.sqrt(np.sum(np.asarray(d["a"]).reshape(4, -1) ** 2, 1) + np.sum(np.asarray(d["b"]) ** 2, 1))
    np.testing.assert_allclose(norms, ref, rtol=1e-5)


def test_dp_noise_has_the_calibrated_std_and_zero_noise_is_the_mean():
    d = {"a": jnp.ones((4, 20000), jnp.float32) * 0.001}  # norm 0.14 < C: clipping is a no-op
    n = jnp.array([5, 5, 5, 0])  # last client is padding
    mean, _ = aggregate(d, n, jax.random.key(0), clip_norm=1.0, noise_multiplier=0.0)
    np.testing.assert_allclose(mean["a"], 0.001, rtol=1e-5)
    noisy, _ = aggregate(d, n, jax.random.key(0), clip_norm=1.0, noise_multiplier=2.0)
    resid = np.asarray(noisy["a"]) - 0.001
    # sum of 3 clipped updates + N(0, (z C)^2), divided by 3 clients: std = 2 / 3
    assert abs(resid.std() - 2.0 / 3.0) < 0.02 and abs(resid.mean()) < 0.02
    with pytest.raises(ValueError, match="clip_norm"):
        aggregate(d, n, jax.random.key(0), noise_multiplier=1.0)


def test_client_sampling_is_deterministic_without_replacement():
    a = sample_clients(0, 3, 100, 10)
    assert len(set(a.tolist())) == 10 and np.array_equal(a, sample_clients(0, 3, 100, 10))
    assert not np.array_equal(a, sample_clients(0, 4, 100, 10))
    with pytest.raises(ValueError, match="clients_per_round"):
        sample_clients(0, 0, 5, 6)
