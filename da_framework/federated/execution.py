"""How the compiled round runs its clients: all at once (vmap), one after another (scan), or
in chunks; chosen per backend and model unless the user names one.

Measured on the 2-core AMD EPYC of ``docs/federated/README.md`` (100 clients, 2 local epochs):

* ``"vmap"``: every client in one ``jax.vmap``.  Batched matrix products: the fastest for
  an MLP on CPU, and the natural choice on accelerators.  Every client runs the largest
  client's number of steps (the finished ones masked).  A convolution vmapped over
  per-client kernels becomes a grouped convolution, which XLA:CPU runs slowly.
* ``"scan"``: a compiled loop over clients (``lax.map``), each client looping over its own
  number of steps: no padding waste and no grouped convolutions.  On CPU its convolutions'
  gradients go through :func:`~da_framework.federated.convs.loop_friendly_convs`, without
  which XLA:CPU would run them as naive loop nests inside the loop.
* ``"chunk"``: ``lax.map`` over chunks of ``client_chunk`` vmapped clients, the clients
  sorted by size first so that a chunk's clients need similar numbers of steps.

``"auto"`` picks ``"scan"`` for models with convolutions on CPU and ``"vmap"`` otherwise.
All strategies compute the same round up to float rounding (``tests/test_federated_execution.py``).
"""

from __future__ import annotations

import dataclasses
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
        strategy = "chunk" if client_chunk is not None else ("scan" if cpu and has_convs else "vmap")
    if strategy == "chunk":
        return Execution("chunk", client_chunk or DEFAULT_CHUNK, loop_convs=cpu and has_convs)
    return Execution(strategy, None, loop_convs=strategy == "scan" and cpu and has_convs)
