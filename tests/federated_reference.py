"""The sequential reference of the federated simulation engine: the definition it must agree with.

Test code, not library code: ``reference_round`` is a plain Python loop over clients and
local steps on unpadded data, independent of the masked, vmapped engine of
:mod:`da_framework.federated.simulation`; ``tests/test_federated_simulation.py`` checks the
engine against it and ``benchmarks/fed_round_time.py`` times both.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from da_framework.federated.algorithms import server_update
from da_framework.federated.simulation import LocalTraining, _client_keys
from da_framework.losses.registry import LossInputs

Params = Any


def reference_round(
    spec: LocalTraining,
    server_tx: optax.GradientTransformation,
    global_params: Params,
    server_state: optax.OptState,
    clients: Sequence[Mapping[str, np.ndarray]],
    labeled: Sequence[bool],
    client_ids: Sequence[int],
    key: jax.Array,
    max_examples: int,
    clip_norm: float | None = None,
) -> tuple[Params, optax.OptState]:
    """One round as a plain loop: each client trains alone on its unpadded data, then the
    updates are clipped and averaged in float64 NumPy, weighted by example counts.

    The client's shuffling order is that of :func:`epoch_order` for padded length
    ``max_examples``; its last batch of an epoch is genuinely smaller (no masks), and the
    adaptation terms see ``B`` real examples wrapping around the epoch.  (No noise: the
    reference is for the deterministic part.)
    """
    k_clients, _ = jax.random.split(key)
    step_fn = _reference_step(spec)
    tx = spec.client_tx()
    spe = spec.steps_per_epoch(max_examples)
    total_steps = spec.local_epochs * spe
    deltas, weights = [], []
    g_leaves, treedef = jax.tree.flatten(global_params)
    for data, lab, cid in zip(clients, labeled, client_ids):
        x = np.asarray(data[spec.input_key], np.float32)
        y = np.asarray(data["label"], np.int32) if lab else np.zeros(len(x), np.int32)
        n = len(x)
        k_order, k_steps = _client_keys(jax.random.fold_in(k_clients, int(cid)))
        params, opt_state = global_params, tx.init(global_params)
        for e in range(spec.local_epochs):
            u = np.asarray(jax.random.uniform(jax.random.fold_in(k_order, e), (max_examples,)))[:n]
            order = np.argsort(u, kind="stable")
            for s in range(math.ceil(n / spec.batch_size)):
                real = order[s * spec.batch_size : (s + 1) * spec.batch_size]
                wrapped = order[(s * spec.batch_size + np.arange(spec.batch_size)) % n]
                t = e * spe + s
                params, opt_state = step_fn(
                    params, opt_state, global_params, x[real], y[real], x[wrapped], float(lab),
                    jax.random.fold_in(k_steps, t), jnp.float32(t / total_steps),
                )
        d = [np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(jax.tree.leaves(params), g_leaves)]
        if clip_norm is not None:
            norm = math.sqrt(sum(float(np.sum(v**2)) for v in d))
            d = [v * min(1.0, clip_norm / max(norm, 1e-12)) for v in d]
        deltas.append(d)
        weights.append(float(n))
    total = sum(weights)
    mean = [sum(w * d[i] for w, d in zip(weights, deltas)) / total for i in range(len(g_leaves))]
    delta = jax.tree.unflatten(treedef, [jnp.asarray(m, g.dtype) for m, g in zip(mean, g_leaves)])
    return server_update(global_params, server_state, delta, server_tx)


@functools.cache
def _reference_step(spec: LocalTraining) -> Callable[..., tuple[Params, optax.OptState]]:
    """A jitted single SGD step on an unpadded batch (independent of the masked code)."""
    tx = spec.client_tx()

    def loss(params, global_params, x, y, x_wrapped, labeled, key, progress):
        k_model, k_loss = jax.random.split(key)
        total = jnp.zeros((), jnp.float32)
        if spec.adaptation is None:
            logits, _ = spec.model.apply({"params": params}, x, train=True, rngs={"dropout": k_model})
        else:
            # one forward pass on the wrapped batch; the real batch is its first len(x) rows
            logits_w, feats_w = spec.model.apply({"params": params}, x_wrapped, train=True, rngs={"dropout": k_model})
            logits = logits_w[: x.shape[0]]
            inputs = LossInputs(
                source_features=feats_w, target_features=feats_w, source_logits=logits_w, target_logits=logits_w,
                source_labels=jnp.zeros(x_wrapped.shape[0], jnp.int32), progress=progress, key=k_loss,
                source_inputs=x_wrapped, target_inputs=x_wrapped, params=params,
                apply_model=lambda p, xx, train=True: spec.model.apply({"params": p}, xx, train=False),
            )
            total = total + spec.adaptation.loss({}, {}, inputs).total
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        total = total + labeled * ce
        if spec.mu:
            sq = sum(jnp.sum((p - g) ** 2) for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(global_params)))
            total = total + 0.5 * spec.mu * sq
        return total

    @jax.jit
    def step(params, opt_state, global_params, x, y, x_wrapped, labeled, key, progress):
        grads = jax.grad(loss)(params, global_params, x, y, x_wrapped, labeled, key, progress)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step
