"""A new adaptation loss in 20 lines: match the mean and variance of source and target features."""

import jax
import jax.numpy as jnp

from da_framework.losses import LossError, LossInputs, register_loss


def mean_var_gap(source: jax.Array, target: jax.Array) -> jax.Array:
    """||mu_s - mu_t||^2 + ||var_s - var_t||^2 over feature dimensions (a 2-moment CMD)."""
    if source.shape[1:] != target.shape[1:]:
        raise LossError(f"mean_var_gap: feature shapes differ: {source.shape} vs {target.shape}")
    s, t = source.astype(jnp.float32), target.astype(jnp.float32)
    return jnp.sum((s.mean(0) - t.mean(0)) ** 2) + jnp.sum((s.var(0) - t.var(0)) ** 2)


@register_loss(
    "mean_var_gap",
    description="squared gap of feature means and variances",
    reference="Zellinger et al., 'Central Moment Discrepancy', ICLR 2017 (first two moments)",
    overwrite=True,
)
def mean_var_gap_term(inputs: LossInputs) -> jax.Array:
    """The registered term: reads the step's source and target features."""
    return mean_var_gap(inputs.source_features, inputs.target_features)
