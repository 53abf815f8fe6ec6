"""Data parallelism over a 1-D device mesh: batch sharded, parameters replicated.

The same jitted step runs on one device or many: with inputs placed by
:func:`shard_batch` and the state by :func:`replicate`, XLA's SPMD partitioner splits the
batch axis and inserts the cross-device reductions.  Because ``jax.jit`` keeps global
semantics, losses that need the whole batch (MMD, CORAL, batch statistics) are computed
over the global batch, exactly as on one device.

Several hosts run the same program after ``jax.distributed.initialize()``: the mesh then
spans every process's devices, each process passes its own slice of the batch to
:func:`shard_batch` (the global batch is the processes' slices in process order), and
:func:`replicate` places the same state on every device (see docs/performance.md).
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from da_framework.errors import UserError

T = TypeVar("T")
DATA_AXIS = "data"


class ParallelError(UserError):
    """Raised when the requested devices or batch size cannot be laid out."""


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` local devices (default: all)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if n > len(devices):
        raise ParallelError(
            f"asked for {n} devices but only {len(devices)} are visible ({devices[0].platform}); "
            "on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N or "
            "jax.config.update('jax_num_cpu_devices', N) before JAX starts"
        )
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def shard_batch(batch: T, mesh: Mesh) -> T:
    """Places every array of ``batch`` split along its first axis across the mesh.

    With one process ``batch`` is the global batch.  With several (``jax.distributed``)
    it is this process's slice, split over this process's devices; the returned arrays
    are the global batch made of every process's slice in process order.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    multi = jax.process_count() > 1
    n = sum(d.process_index == jax.process_index() for d in mesh.devices.flat) if multi else mesh.devices.size

    def put(x: Any) -> jax.Array:
        if x.shape[0] % n:
            where = "this process's" if multi else ""
            raise ParallelError(
                f"batch of {x.shape[0]} examples does not split over {n} {where} devices; "
                f"use a batch_size divisible by {n}"
            )
        if multi:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(put, batch)


def replicate(tree: T, mesh: Mesh) -> T:
    """Places a full copy of every array of ``tree`` on every device of the mesh.

    With several processes every process must pass the same values (same seed).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)
