"""Batch spectral penalization (BSP): shrink the largest singular values of the feature batches.

Chen, Wang, Long & Wang, "Transferability vs. Discriminability: Batch Spectral Penalization
for Adversarial Domain Adaptation", ICML 2019.  With F_s = U_s Sigma_s V_s^T and
F_t = U_t Sigma_t V_t^T the SVDs of the (n, d) source and (m, d) target feature batches,

    L_bsp = sum_{i=1}^{k} (sigma_{s,i}^2 + sigma_{t,i}^2),

the k largest singular values of each batch (k = 1 in the paper and in Transfer-Learning-
Library's ``tllib/alignment/bsp.py`` ``BatchSpectralPenalizationLoss``, which returns
``s_s[0]^2 + s_t[0]^2``).  It is added to an adversarial method with a small weight:
``L = L_ce + L_dann + beta * L_bsp``.

Gradient: for a simple top singular value, d sigma_1 / dF = u_1 v_1^T, so
d L / dF = 2 sigma_1 u_1 v_1^T = 2 F v_1 v_1^T.  JAX differentiates the singular values through
``U^T dF V`` only, so repeated singular values give finite (sub)gradients, not NaN.

Variant notes: only the loss is implemented.  tllib's ``bsp.py`` example also first pre-trains
the classifier on the source domain (``--pretrain-epochs``, 3 by default, 1 on SVHN->MNIST) and
then trains DANN + BSP from it; the project's method spec starts from the initial model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_batch, check_feature_pair, compute_dtype
from da_framework.losses.registry import LossError, LossInputs, register_loss


def _check_k(features: jax.Array, k: int, loss: str) -> int:
    """Returns ``k`` as an int after checking 1 <= k <= min(n, d) for an (n, d) batch."""
    rank = min(features.shape)
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= rank:
        raise LossError(
            f"{loss}: k must be an integer in [1, min(n, d)] = [1, {rank}] for features "
            f"{features.shape}, got {k!r}; lower k or use a larger batch"
        )
    return int(k)


def top_singular_penalty(features: jax.Array, k: int = 1) -> jax.Array:
    """The sum of the k largest squared singular values of one (n, d) feature batch.

    For k = 1 this is the squared spectral norm ||F||_2^2, the largest eigenvalue of F^T F.

    Args:
      features: (n, d) features.
      k: how many of the min(n, d) singular values to penalise, 1 <= k <= min(n, d).

    Returns:
      the scalar penalty >= 0 in float32 (float64 inputs stay float64); invariant to the order
      of examples and to orthogonal transforms of the feature space.

    Raises:
      LossError: for a non-2-D or empty batch, or k out of range.
    """
    check_batch(features, "bsp")
    k = _check_k(features, k, "bsp")
    sigma = jnp.linalg.svd(features.astype(compute_dtype(features)), compute_uv=False)  # descending
    return jnp.sum(sigma[:k] ** 2)


def batch_spectral_penalization(source: jax.Array, target: jax.Array, k: int = 1) -> jax.Array:
    """BSP: sum_{i<=k} sigma_{s,i}^2 + sigma_{t,i}^2 of the two feature batches (Chen et al. 2019).

    Args:
      source: (n, d) source features.
      target: (m, d) target features (m may differ from n).
      k: how many of the largest singular values of each batch to penalise (paper: 1).

    Returns:
      the scalar penalty >= 0 in float32 (float64 inputs stay float64).

    Raises:
      LossError: for non-2-D inputs, different widths, an empty batch or k out of range.
    """
    check_feature_pair(source, target, "bsp")
    return top_singular_penalty(source, k) + top_singular_penalty(target, k)


@register_loss(
    "bsp",
    description="penalise the k largest squared singular values of source and target features (BSP)",
    reference="Chen et al., 'Transferability vs. Discriminability: Batch Spectral Penalization for "
    "Adversarial Domain Adaptation', ICML 2019",
)
def bsp_term(inputs: LossInputs, k: int = 1) -> jax.Array:
    """BSP of the step's source and target features; used beside ``dann`` with a small weight."""
    return batch_spectral_penalization(inputs.source_features, inputs.target_features, k)
