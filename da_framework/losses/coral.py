"""Deep CORAL: align the second-order statistics of source and target features.

Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016
Workshops.  With C_S, C_T the (d, d) feature covariances,

    C = (D^T D - (1^T D)^T (1^T D) / n) / (n - 1),      L_CORAL = ||C_S - C_T||_F^2 / (4 d^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_feature_pair, check_min_batch, compute_dtype
from da_framework.losses.registry import LossInputs, register_loss


def covariance(x: jax.Array) -> jax.Array:
    """The unbiased (d, d) covariance of the rows of an (n, d) array, n >= 2 (Sun & Saenko)."""
    centred = x - jnp.mean(x, axis=0, keepdims=True)
    return centred.T @ centred / (x.shape[0] - 1)


def coral(source: jax.Array, target: jax.Array) -> jax.Array:
    """The Deep CORAL loss ||C_S - C_T||_F^2 / (4 d^2) (Sun & Saenko 2016).

    Args:
      source: (n, d) source features, n >= 2.
      target: (m, d) target features, m >= 2 (n and m may differ).

    Returns:
      the scalar loss, computed in float32 (float64 inputs stay float64); zero when the
      two batches have the same covariance, symmetric in its arguments.

    Raises:
      LossError: for non-2-D inputs, different widths or fewer than 2 examples in a batch.
    """
    check_feature_pair(source, target, "coral")
    check_min_batch(source, 2, "coral")
    check_min_batch(target, 2, "coral")
    dtype = compute_dtype(source)
    d = source.shape[1]
    diff = covariance(source.astype(dtype)) - covariance(target.astype(dtype))
    return jnp.sum(diff**2) / (4.0 * d * d)


@register_loss(
    "coral",
    description="Frobenius distance of source and target feature covariances (Deep CORAL)",
    reference="Sun & Saenko, 'Deep CORAL: Correlation Alignment for Deep Domain Adaptation', ECCV-W 2016",
)
def coral_term(inputs: LossInputs) -> jax.Array:
    """Deep CORAL between the step's source and target features."""
    return coral(inputs.source_features, inputs.target_features)
