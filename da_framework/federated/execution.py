"""How the compiled round runs its clients: all at once (vmap), one after another (scan), or
in chunks; chosen per backend and model unless the user names one.

Measured on the 2-core AMD EPYC and Intel Xeon of ``docs/federated/README.md`` (100 clients,
2 local epochs):

* ``"vmap"``: every client in one ``jax.vmap``.  Batched matrix products: the natural choice
  on accelerators; on both CPUs slower than ``"scan"`` even for an MLP (12.2x vs 15.0x the
  loop on the AMD EPYC, 8.6x vs 12.7x on the Intel Xeon).  Every client runs the largest
  client's number of steps (the finished ones masked).  A convolution vmapped over
  per-client kernels becomes a grouped convolution, which XLA:CPU runs slowly.
* ``"scan"``: a compiled loop over clients (``lax.map``), each client looping over its own
  number of steps: no padding waste and no grouped convolutions.  On CPU its convolutions'
  gradients go through :func:`~da_framework.federated.convs.loop_friendly_convs`, without
  which XLA:CPU would run them as naive loop nests inside the loop.
* ``"chunk"``: ``lax.map`` over chunks of ``client_chunk`` vmapped clients, the clients
  sorted by size first so that a chunk's clients need similar numbers of steps.

``"auto"`` picks ``"scan"`` on CPU and ``"vmap"`` on accelerators.
All strategies compute the same round up to float rounding (``tests/test_federated_execution.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from da_framework.errors import UserError
from da_framework.federated.convs import has_convolutions

STRATEGIES = ("auto", "vmap", "scan", "chunk")
DEFAULT_CHUNK = 10


@dataclasses.dataclass(frozen=True)
class Execution:
    """A resolved execution strategy.

    Attributes:
      kind: ``"vmap"``, ``"scan"`` or ``"chunk"``.
      chunk: clients per chunk (``"chunk"`` only).
      loop_convs: route convolution gradients through ``loop_friendly_convs``.
    """

    kind: str
    chunk: int | None = None
    loop_convs: bool = False


def model_has_convolutions(model: Any, input_shape: tuple[int, ...]) -> bool:
    """Whether ``model``'s training forward pass on one ``input_shape`` example has convolutions."""
    x = jnp.zeros((1, *input_shape), jnp.float32)

    def forward(x):
        variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
        return model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})

    return has_convolutions(forward, x)


def resolve_execution(
    strategy: str,
    client_chunk: int | None,
    has_convs: bool,
    backend: str | None = None,
) -> Execution:
    """The :class:`Execution` for a strategy name (``"auto"`` decided by backend and model).

    Args:
      strategy: one of :data:`STRATEGIES`.
      client_chunk: clients per chunk for ``"chunk"`` (default :data:`DEFAULT_CHUNK`); with
        ``"auto"`` a given ``client_chunk`` means ``"chunk"`` (the older setting's meaning).
      has_convs: whether the client model has convolutions.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"`` (default: ``jax.default_backend()``).
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown client execution strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if client_chunk is not None and client_chunk <= 0:
        raise UserError(f"client_chunk must be a positive int or None, got {client_chunk!r}")
    cpu = (backend or jax.default_backend()) == "cpu"
    if strategy == "auto":
        strategy = "chunk" if client_chunk is not None else ("scan" if cpu else "vmap")
    if strategy == "chunk":
        return Execution("chunk", client_chunk or DEFAULT_CHUNK, loop_convs=cpu and has_convs)
    return Execution(strategy, None, loop_convs=strategy == "scan" and cpu and has_convs)


def scan_and_average(
    client_update: Callable[[Any, Any, jax.Array], tuple[Any, dict[str, jax.Array]]],
    global_params: Any,
    clients: Any,
    keys: jax.Array,
    clip_norm: float | None,
) -> tuple[Any, dict[str, jax.Array], dict[str, jax.Array]]:
    """The ``"scan"`` strategy with the FedAvg average accumulated inside the loop over clients.

    Computes what ``aggregate(client_deltas(...), num_examples, key, clip_norm)`` computes
    without DP noise (the example-weighted mean of the optionally clipped updates, and the
    update-norm metrics) while holding one client's update at a time instead of stacking all
    ``m`` of them: on XLA:CPU the stacked ``(m, ...)`` buffers of a 100-client LeNet round
    were about 15% of the round (fresh memory to fault in every call).  The sum runs in
    client order, so it equals the stacked average to float rounding, not bitwise.

    Returns:
      ``(mean update, {"update_norm_mean", "update_norm_max"}, {"loss": (m,) client losses})``.
    """
    w = clients.num_examples.astype(jnp.float32)
    total = jnp.sum(w)
    norm_w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)

    def body(acc, inputs):
        data, key, wk = inputs
        params, cm = client_update(global_params, data, key)
        delta = jax.tree.map(jnp.subtract, params, global_params)
        norm = jnp.sqrt(sum(jnp.sum(d.astype(jnp.float32) ** 2) for d in jax.tree.leaves(delta)))
        scale = wk if clip_norm is None else wk * jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-12))
        acc = jax.tree.map(lambda a, d: a + scale.astype(d.dtype) * d, acc, delta)
        return acc, (norm, cm["loss"])

    zeros = jax.tree.map(jnp.zeros_like, global_params)
    mean, (norms, losses) = jax.lax.scan(body, zeros, (clients, keys, norm_w))
    active = (clients.num_examples > 0).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(active), 1.0)
    metrics = {"update_norm_mean": jnp.sum(norms * active) / count, "update_norm_max": jnp.max(norms * active)}
    return mean, metrics, {"loss": losses}
