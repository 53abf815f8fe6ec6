"""Prediction-entropy losses on unlabelled target batches.

* Entropy minimisation: Grandvalet & Bengio, "Semi-supervised Learning by Entropy
  Minimization", NeurIPS 2004:  L_ent = -(1/n) sum_i sum_k p_ik log p_ik.
* Information maximisation (SHOT-IM): Liang, Hu & Feng, "Do We Really Need to Access the
  Source Data? Source Hypothesis Transfer for Unsupervised Domain Adaptation", ICML 2020:
  L_IM = L_ent + L_div  with  L_div = sum_k pbar_k log pbar_k = -H(pbar),
  pbar = (1/n) sum_i p_i: confident individual predictions that are diverse over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_batch, compute_dtype
from da_framework.losses.registry import LossInputs, register_loss


def prediction_entropy(logits: jax.Array) -> jax.Array:
    """(n,) Shannon entropies (nats) of the softmax predictions of (n, k) logits."""
    logits = logits.astype(compute_dtype(logits))
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropy_loss(logits: jax.Array) -> jax.Array:
    """Mean prediction entropy (Grandvalet & Bengio 2004).

    Args:
      logits: (n, k) unnormalised scores of unlabelled examples.

    Returns:
      the scalar mean entropy in [0, log k], float32 (float64 inputs stay float64).

    Raises:
      LossError: for non-2-D or empty logits.
    """
    check_batch(logits, "entropy_loss", "classes")
    return jnp.mean(prediction_entropy(logits))


def information_maximization(logits: jax.Array, diversity_weight: float = 1.0) -> jax.Array:
    """SHOT's information-maximisation loss: mean entropy minus entropy of the mean prediction.

    Liang et al., ICML 2020:  L_IM = mean_i H(p_i) - diversity_weight * H(pbar).

    Args:
      logits: (n, k) unnormalised target scores.
      diversity_weight: weight of the diversity term (1 in SHOT).

    Returns:
      the scalar loss in [-diversity_weight log k, log k]; its minimum -log k (for weight 1)
      is reached by confident predictions spread evenly over the classes.

    Raises:
      LossError: for non-2-D or empty logits.
    """
    check_batch(logits, "information_maximization", "classes")
    logits = logits.astype(compute_dtype(logits))
    p_mean = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
    diversity = -jnp.sum(jax.scipy.special.xlogy(p_mean, p_mean))
    return jnp.mean(prediction_entropy(logits)) - diversity_weight * diversity


@register_loss(
    "entropy",
    description="mean entropy of target predictions (entropy minimisation)",
    reference="Grandvalet & Bengio, 'Semi-supervised Learning by Entropy Minimization', NeurIPS 2004",
)
def entropy_term(inputs: LossInputs) -> jax.Array:
    """Entropy of the target batch's predictions."""
    return entropy_loss(inputs.target_logits)


@register_loss(
    "shot_im",
    description="information maximisation on target: entropy minus diversity (SHOT-IM)",
    reference="Liang et al., 'Do We Really Need to Access the Source Data? Source Hypothesis Transfer "
    "for Unsupervised Domain Adaptation', ICML 2020",
)
def shot_im_term(inputs: LossInputs, diversity_weight: float = 1.0) -> jax.Array:
    """SHOT-IM on the target batch's predictions."""
    return information_maximization(inputs.target_logits, diversity_weight)
