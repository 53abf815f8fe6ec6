"""Entropy minimisation on unlabelled (target) predictions.

Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004
(the empirical conditional entropy H_emp of eq. 5): the mean Shannon entropy of the
predicted class distributions of the unlabelled examples,

    H = -(1/n) sum_i sum_c p_ic log p_ic,   p_i = softmax(logits_i).

Used by e.g. RTN, MCC and SHOT as a target regulariser; needs only the target batch, so
it is usable per client in federated domain adaptation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.registry import LossError, LossInputs, register_loss


def prediction_entropy(logits: jax.Array) -> jax.Array:
    """Mean entropy (nats) of ``softmax(logits)`` over the rows of (n, k) ``logits``."""
    if logits.ndim != 2:
        raise LossError(f"prediction_entropy: expected logits (n, k), got shape {logits.shape}")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


@register_loss(
    "entropy",
    description="mean prediction entropy of the target batch (entropy minimisation)",
    reference="Grandvalet & Bengio, 'Semi-supervised Learning by Entropy Minimization', NeurIPS 2004",
)
def entropy_term(inputs: LossInputs) -> jax.Array:
    """Entropy of the target batch's predictions (Grandvalet & Bengio 2004, eq. 5)."""
    return prediction_entropy(inputs.target_logits)
