"""Federated optimisation algorithms as pure functions over a stacked client axis.

Every function takes pytrees whose leaves carry a leading *client* axis (one row per
sampled client), so one round of any algorithm is a few array operations that ``jax.jit``
compiles once and ``jax.sharding`` can split over devices.

* **FedAvg** — McMahan, Moore, Ramage, Hampson & Agüera y Arcas, "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017 (Algorithm 1): the new
  global model is ``w + sum_k (n_k / n) (w_k - w)``, the example-count weighted average of
  the client updates (:func:`weighted_average`).
* **FedProx** — Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith, "Federated Optimization in
  Heterogeneous Networks", MLSys 2020 (eq. 2): each client minimises
  ``F_k(w) + mu/2 ||w - w^t||^2`` (:func:`proximal_term`).
* **FedOpt** (FedAdam, FedYogi, FedAvgM) — Reddi, Charles, Zaheer, Garrett, Rush, Konečný,
  Kumar & McMahan, "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2): the server
  treats the negative averaged update ``-Delta`` as a pseudo-gradient and applies an optax
  transformation to it (:func:`server_optimizer`, :func:`server_update`).  FedAvg is
  ``sgd(1.0)``.  Note: optax's ``adam``/``yogi`` apply bias correction / their own
  accumulator initialisation, which Reddi et al.'s Algorithm 2 omits; with tau as optax's
  ``eps`` the update direction is otherwise the paper's.
* **DP-FedAvg style clipping + noise** — McMahan, Ramage, Talwar & Zhang, "Learning
  Differentially Private Recurrent Language Models", ICLR 2018 (Algorithm 1, flat
  clipping): each client update is scaled to L2 norm <= C (:func:`clip_updates`); Gaussian
  noise of std ``z * C`` is added to the *sum* of the clipped updates, which is then
  divided by the number of clients (uniform weights, so the sensitivity is C).  No privacy
  accounting is done here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from da_framework.errors import UserError

Params = Any


def tree_sub(a: Params, b: Params) -> Params:
    """Leafwise ``a - b``."""
    return jax.tree.map(jnp.subtract, a, b)


def client_deltas(client_params: Params, global_params: Params) -> Params:
    """Per-client updates ``w_k - w`` (client axis first; ``global_params`` unbatched)."""
    return jax.tree.map(lambda c, g: c - g[None], client_params, global_params)


def per_client_norms(deltas: Params) -> jax.Array:
    """(m,) global L2 norm of each client's update over all leaves."""
    sq = [jnp.sum(jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32) ** 2, axis=1) for x in jax.tree.leaves(deltas)]
    return jnp.sqrt(sum(sq))


def clip_updates(deltas: Params, clip_norm: float) -> tuple[Params, jax.Array]:
    """Scales each client's update to L2 norm at most ``clip_norm`` (flat clipping).

    Returns:
      ``(clipped deltas, (m,) norms before clipping)``; an update with norm <= C is unchanged.
    """
    norms = per_client_norms(deltas)
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
    clipped = jax.tree.map(lambda x: x * scale.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype), deltas)
    return clipped, norms


def weighted_average(deltas: Params, weights: jax.Array) -> Params:
    """``sum_k weights_k * deltas_k / sum_k weights_k`` (zero when all weights are zero).

    Args:
      deltas: pytree with a leading client axis of size m.
      weights: (m,) non-negative weights, e.g. client example counts n_k (FedAvg).
    """
    weights = jnp.asarray(weights, jnp.float32)
    total = jnp.sum(weights)
    norm = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
    return jax.tree.map(lambda x: jnp.tensordot(norm.astype(x.dtype), x, axes=1), deltas)


def dp_noised_mean(deltas: Params, active: jax.Array, clip_norm: float, noise_multiplier: float, key: jax.Array) -> Params:
    """DP-FedAvg aggregate: (sum of clipped updates + N(0, (z C)^2)) / number of clients.

    Args:
      deltas: already clipped per-client updates (client axis first).
      active: (m,) 1 for real sampled clients, 0 for padding clients.
      clip_norm: the clipping bound C.
      noise_multiplier: z.
      key: PRNG key of the noise.
    """
    active = jnp.asarray(active, jnp.float32)
    count = jnp.maximum(jnp.sum(active), 1.0)
    leaves, treedef = jax.tree.flatten(deltas)
    keys = jax.random.split(key, len(leaves))
    out = []
    for x, k in zip(leaves, keys):
        total = jnp.tensordot(active.astype(x.dtype), x, axes=1)
        noise = noise_multiplier * clip_norm * jax.random.normal(k, total.shape, x.dtype)
        out.append((total + noise) / count)
    return jax.tree.unflatten(treedef, out)


def aggregate(
    deltas: Params,
    num_examples: jax.Array,
    key: jax.Array,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
) -> tuple[Params, dict[str, jax.Array]]:
    """The server's averaged update Delta from the clients' updates.

    Without noise: the ``num_examples``-weighted average (FedAvg), after optional clipping.
    With ``noise_multiplier > 0``: clipped updates, uniform weights, Gaussian noise
    (:func:`dp_noised_mean`).  Clients with ``num_examples == 0`` (padding) never count.

    Returns:
      ``(Delta, {"update_norm_mean", "update_norm_max"})`` (norms before clipping).
    """
    norms = per_client_norms(deltas)
    active = (jnp.asarray(num_examples) > 0).astype(jnp.float32)
    if clip_norm is not None:
        deltas, _ = clip_updates(deltas, clip_norm)
    if noise_multiplier > 0:
        if clip_norm is None:
            raise UserError("aggregate: noise_multiplier > 0 needs clip_norm; set clip_norm to the update bound C")
        mean = dp_noised_mean(deltas, active, clip_norm, noise_multiplier, key)
    else:
        mean = weighted_average(deltas, num_examples)
    count = jnp.maximum(jnp.sum(active), 1.0)
    metrics = {"update_norm_mean": jnp.sum(norms * active) / count, "update_norm_max": jnp.max(norms * active)}
    return mean, metrics


def proximal_term(params: Params, global_params: Params, mu: float | jax.Array) -> jax.Array:
    """FedProx's proximal term ``mu/2 * ||w - w^t||^2`` (Li et al. 2020, eq. 2).

    Its gradient with respect to ``params`` is ``mu * (w - w^t)``.
    """
    sq = sum(jnp.sum((p - jax.lax.stop_gradient(g)).astype(jnp.float32) ** 2) for p, g in zip(
        jax.tree.leaves(params), jax.tree.leaves(global_params)))
    return 0.5 * mu * sq


def server_optimizer(
    name: str,
    learning_rate: float = 1.0,
    momentum: float = 0.9,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
) -> optax.GradientTransformation:
    """The FedOpt server optimiser as an optax transformation of the pseudo-gradient.

    Args:
      name: ``"sgd"`` (FedAvg with ``learning_rate=1``), ``"momentum"`` (FedAvgM, heavy ball),
        ``"adam"`` (FedAdam) or ``"yogi"`` (FedYogi).
      learning_rate: server learning rate eta.
      momentum: heavy-ball momentum of ``"momentum"``.
      b1, b2: moment decays of adam/yogi (Reddi et al. use 0.9, 0.99).
      tau: adaptivity tau (optax ``eps``) of adam/yogi.
    """
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "adam":
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=tau)
    if name == "yogi":
        return optax.yogi(learning_rate, b1=b1, b2=b2, eps=tau)
    raise UserError(f"unknown server optimizer {name!r}; valid: sgd, momentum, adam, yogi")


def server_update(
    global_params: Params, server_state: optax.OptState, delta: Params, tx: optax.GradientTransformation
) -> tuple[Params, optax.OptState]:
    """Applies ``tx`` to the pseudo-gradient ``-delta`` and steps the global model."""
    pseudo_grad = jax.tree.map(jnp.negative, delta)
    updates, server_state = tx.update(pseudo_grad, server_state, global_params)
    return optax.apply_updates(global_params, updates), server_state


def sample_clients(seed: int, round_index: int, num_clients: int, clients_per_round: int) -> np.ndarray:
    """Clients of one round: uniform without replacement, sorted; deterministic in (seed, round)."""
    if not 0 < clients_per_round <= num_clients:
        raise UserError(f"clients_per_round must be in [1, {num_clients}], got {clients_per_round}")
    rng = np.random.default_rng([seed, round_index, 0xFED])
    return np.sort(rng.choice(num_clients, clients_per_round, replace=False))
