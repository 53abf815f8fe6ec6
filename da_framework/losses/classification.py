"""Supervised classification loss on the labelled source batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.registry import LossError, LossInputs, register_loss


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of integer ``labels`` under ``logits``.

    Args:
      logits: (n, k) unnormalised scores.
      labels: (n,) integer class ids in [0, k).
      label_smoothing: mass spread uniformly over the k classes (Szegedy et al., 2016).

    Returns:
      the scalar mean loss (float32 even for bfloat16 logits).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise LossError(
            f"cross_entropy: expected logits (n, k) and labels (n,), got {logits.shape} and {labels.shape}"
        )
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return jnp.mean(optax.softmax_cross_entropy(logits, targets))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@register_loss(
    "cross_entropy",
    description="softmax cross-entropy on labelled source examples (empirical risk)",
    reference="Vapnik, 'Principles of Risk Minimization for Learning Theory', NeurIPS 1991",
)
def cross_entropy_term(inputs: LossInputs, label_smoothing: float = 0.0) -> jax.Array:
    """Source cross-entropy: the supervised part of every method."""
    return cross_entropy(inputs.source_logits, inputs.source_labels, label_smoothing)
