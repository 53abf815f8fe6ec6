"""Storage size of a model's parameters: dense, sparse (pruned) and quantised.

The sizes are what a simple on-disk format would take, computed exactly from the arrays:

* dense: ``size * itemsize`` per leaf (float32: 4 bytes per value);
* sparse leaves (``sparse=True``, prunable leaves only): a keep-bitmap of ``ceil(n / 8)``
  bytes plus the non-zero values;
* quantised leaves (``bits`` < 32): values packed at ``bits`` bits, ``ceil(count * bits / 8)``
  bytes, plus one float32 scale per output channel (last axis).

Non-matching leaves (biases, normalisation) are always counted dense.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from da_framework.transfer.weights import PathFilter, flatten, matches


def storage_bytes(params: Any, *, bits: int | None = None, sparse: bool = False, include: PathFilter = r"kernel$") -> int:
    """Bytes to store ``params`` (see the module docstring).

    Args:
      params: parameter tree (floats; pruned entries exactly zero).
      bits: bit width of the matching leaves' values, None for their own dtype.
      sparse: store matching leaves as bitmap + non-zero values.
      include: regex(es) of the leaves that are quantised / stored sparsely.
    """
    total = 0
    for path, leaf in flatten(params).items():
        arr = np.asarray(leaf)
        if not matches(path, include) or arr.ndim == 0:
            total += arr.nbytes
            continue
        count = int(np.count_nonzero(arr)) if sparse else arr.size
        value_bits = bits if bits is not None else 8 * arr.dtype.itemsize
        total += -(-count * value_bits // 8)
        if sparse:
            total += -(-arr.size // 8)
        if bits is not None and bits < 32:
            total += 4 * (arr.shape[-1] if arr.ndim >= 1 else 1)
    return total


def num_params(params: Any) -> int:
    """Number of scalar parameters."""
    return int(sum(int(jnp.size(v)) for v in flatten(params).values()))
