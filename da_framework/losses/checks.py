"""Shape checks shared by the losses: clear errors at trace time, not deep in XLA."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def compute_dtype(x: jax.Array) -> jax.typing.DTypeLike:
    """The dtype losses compute in: float32 for bfloat16/float16/float32 inputs, float64 kept."""
    return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def check_batch(x: jax.Array, loss: str, what: str = "features") -> None:
    """Checks one (n, d) batch: rank 2 and non-empty (n >= 1, d >= 1).

    Raises:
      LossError: naming the loss, the shape and the fix.
    """
    if x.ndim != 2:
        raise LossError(f"{loss}: expected a 2-D (batch, {what}) array, got shape {x.shape}; flatten it first")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise LossError(f"{loss}: empty batch or zero-width {what} (shape {x.shape})")


def check_min_batch(x: jax.Array, minimum: int, loss: str) -> None:
    """Checks that a batch has at least ``minimum`` examples (e.g. 2 for a covariance)."""
    if x.shape[0] < minimum:
        raise LossError(f"{loss}: needs at least {minimum} examples per batch, got {x.shape[0]} (shape {x.shape})")


def check_positive(value: float | jax.Array, name: str, loss: str) -> None:
    """Checks that a scalar hyper-parameter is > 0 when it is concrete (traced values pass through)."""
    try:
        concrete = float(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return
    if not concrete > 0:
        raise LossError(f"{loss}: {name} must be > 0, got {value!r}")
