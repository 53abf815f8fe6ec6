"""Shape checks shared by the losses: clear errors at trace time, not deep in XLA."""

from __future__ import annotations

import jax

from da_framework.losses.registry import LossError


def check_feature_pair(source: jax.Array, target: jax.Array, loss: str) -> None:
    """Checks two (n, d) feature batches: rank 2, same width d, non-empty.

    Raises:
      LossError: naming the loss, the shapes and the fix.
    """
    if source.ndim != 2 or target.ndim != 2:
        raise LossError(
            f"{loss}: expected 2-D (batch, features) arrays, got shapes {source.shape} and "
            f"{target.shape}; flatten features first"
        )
    if source.shape[1] != target.shape[1]:
        raise LossError(
            f"{loss}: source and target feature widths differ ({source.shape[1]} vs "
            f"{target.shape[1]}); both batches must come from the same feature layer"
        )
    if source.shape[0] == 0 or target.shape[0] == 0:
        raise LossError(f"{loss}: empty batch (shapes {source.shape}, {target.shape})")
