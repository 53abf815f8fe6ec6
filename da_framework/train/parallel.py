"""Data parallelism over a 1-D device mesh: batch sharded, parameters replicated.

The same jitted step runs on one device or many: with inputs placed by
:func:`shard_batch` and the state by :func:`replicate`, XLA's SPMD partitioner splits the
batch axis and inserts the cross-device reductions.  Because ``jax.jit`` keeps global
semantics, losses that need the whole batch (MMD, CORAL, batch statistics) are computed
over the global batch, exactly as on one device.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

T = TypeVar("T")
DATA_AXIS = "data"


class ParallelError(ValueError):
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
    """Places every array of ``batch`` split along its first axis across the mesh."""
    n = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def put(x: Any) -> jax.Array:
        if x.shape[0] % n:
            raise ParallelError(
                f"batch of {x.shape[0]} examples does not split over {n} devices; "
                f"use a batch_size divisible by {n}"
            )
        return jax.device_put(x, sharding)

    return jax.tree.map(put, batch)


def replicate(tree: T, mesh: Mesh) -> T:
    """Places a full copy of every array of ``tree`` on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
