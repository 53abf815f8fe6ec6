"""Class-confusion and batch-prediction-matrix losses on unlabelled target batches.

* Minimum class confusion (MCC): Jin, Wang, Long & Wang, "Minimum Class Confusion for
  Versatile Domain Adaptation", ECCV 2020.  With temperature-scaled predictions
  Y = softmax(Z / T) (n, k), example weights
  W_ii = n (1 + exp(-H(y_i))) / sum_j (1 + exp(-H(y_j)))  (no gradient through W),
  the class correlation C = Y^T W Y, its category normalisation
  C~_jj' = C_jj' / sum_j'' C_j''j', and  L_MCC = (1/k) sum_j sum_{j' != j} |C~_jj'|.
* Batch nuclear-norm maximisation (BNM): Cui, Wang, Zhuo, Li, Huang & Tian, "Towards
  Discriminability and Diversity: Batch Nuclear-norm Maximization under Label Insufficient
  Situations", CVPR 2020:  L_BNM = -||A||_* / n,  A = softmax(Z) (n, k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_batch, check_positive, compute_dtype
from da_framework.losses.entropy import prediction_entropy
from da_framework.losses.registry import LossInputs, register_loss


def minimum_class_confusion(logits: jax.Array, temperature: float = 2.5) -> jax.Array:
    """The MCC loss of a batch of target logits (Jin et al. 2020).

    Args:
      logits: (n, k) unnormalised target scores.
      temperature: T > 0 of the rescaled softmax (2.5 in the paper).

    Returns:
      the scalar loss in [0, (k - 1) / k] (float32; float64 inputs stay float64); zero
      when every example is predicted one-hot and no two classes co-occur in an example.

    Raises:
      LossError: for non-2-D or empty logits, or temperature <= 0.
    """
    check_batch(logits, "minimum_class_confusion", "classes")
    check_positive(temperature, "temperature", "minimum_class_confusion")
    logits = logits.astype(compute_dtype(logits))
    n, k = logits.shape
    scaled = logits / temperature
    probs = jax.nn.softmax(scaled, axis=-1)
    weight = jax.lax.stop_gradient(1.0 + jnp.exp(-prediction_entropy(scaled)))
    weight = n * weight / jnp.sum(weight)
    confusion = (probs * weight[:, None]).T @ probs
    confusion = confusion / jnp.sum(confusion, axis=0, keepdims=True)
    return (jnp.sum(confusion) - jnp.trace(confusion)) / k


def batch_nuclear_norm(logits: jax.Array) -> jax.Array:
    """The BNM loss -||softmax(logits)||_* / n (Cui et al. 2020).

    Args:
      logits: (n, k) unnormalised target scores.

    Returns:
      the scalar loss, between -sqrt(min(n, k) / n) and 0 (float32; float64 inputs stay
      float64); lower means more confident and more diverse batch predictions.

    Raises:
      LossError: for non-2-D or empty logits.
    """
    check_batch(logits, "batch_nuclear_norm", "classes")
    logits = logits.astype(compute_dtype(logits))
    probs = jax.nn.softmax(logits, axis=-1)
    return -jnp.sum(jnp.linalg.svd(probs, compute_uv=False)) / logits.shape[0]


@register_loss(
    "mcc",
    description="minimum class confusion of temperature-scaled target predictions (MCC)",
    reference="Jin et al., 'Minimum Class Confusion for Versatile Domain Adaptation', ECCV 2020",
)
def mcc_term(inputs: LossInputs, temperature: float = 2.5) -> jax.Array:
    """MCC on the target batch's logits."""
    return minimum_class_confusion(inputs.target_logits, temperature)


@register_loss(
    "bnm",
    description="negative nuclear norm of the target prediction matrix (BNM)",
    reference="Cui et al., 'Towards Discriminability and Diversity: Batch Nuclear-norm Maximization "
    "under Label Insufficient Situations', CVPR 2020",
)
def bnm_term(inputs: LossInputs) -> jax.Array:
    """BNM on the target batch's predictions."""
    return batch_nuclear_norm(inputs.target_logits)
