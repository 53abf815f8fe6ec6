"""Adaptive feature norm (AFN): enlarge the L2 norms of source and target features.

Xu, Li, Yang & Lin, "Larger Norm More Transferability: An Adaptive Feature Norm Approach for
Unsupervised Domain Adaptation", ICCV 2019.  Two variants, each applied to the source and to
the target feature batch and the two results summed:

* Stepwise AFN (SAFN, registered as ``afn``): every example's norm is pulled towards its own
  current norm plus a step ``delta`` (Delta r), the target held constant (stop-gradient):

      L_safn(F) = mean_i (||f_i|| - (sg(||f_i||) + delta))^2.

  Its value is always delta^2; only its gradient matters,
  d L / d f_i = -(2 delta / n) f_i / ||f_i||, a push of every feature outwards along its own
  direction.  This is tllib's ``AdaptiveFeatureNorm`` (``tllib/alignment/afn.py``, later
  ``tllib/normalization/afn.py``) and the authors' code (github.com/jihanyang/AFN).
* Hard AFN (HAFN, registered as ``hafn``): the batch's mean norm is pulled to a fixed radius R,

      L_hafn(F) = (mean_i ||f_i|| - R)^2,

  as in the authors' code (``vanilla/Office31/HAFN/code/train.py``: radius 25.0, weight 0.05).

The distance L_d of the paper is the squared difference, as in both codes.  The paper writes the
penalty as lambda / (n_s + n_t) times a sum over the joint batch; tllib and the authors' code sum
the per-domain means (L(F_s) + L(F_t)), which this module follows so that their weights apply.

Variant notes: only the loss is implemented.  tllib's AFN classifier also changes the model: a
bottleneck ``Block`` Dense(1000) -> BatchNorm -> ReLU -> Dropout(0.5) whose dropout keeps the
L2 norm (output times sqrt(1 - p)), N(0, 0.01) initialisation of bottleneck and head, and a
fixed learning rate.  Here the norm is taken of the project's adaptation features as they are
(the ``Bottleneck``: Dense -> LayerNorm -> ReLU, no dropout by default).

A zero feature vector has norm 0 and gradient 0 here (the subgradient PyTorch's ``norm`` uses),
not the NaN of differentiating sqrt at 0; ReLU features can be all zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_batch, check_feature_pair, check_positive, compute_dtype
from da_framework.losses.registry import LossInputs, register_loss


def feature_norms(features: jax.Array) -> jax.Array:
    """The (n,) L2 norms of the rows of (n, d) features, with gradient 0 at a zero row.

    Computed in float32 (float64 inputs stay float64).
    """
    x = features.astype(compute_dtype(features))
    sq = jnp.sum(x * x, axis=1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def stepwise_feature_norm(features: jax.Array, delta: float = 1.0) -> jax.Array:
    """SAFN of one batch: mean_i (||f_i|| - (sg(||f_i||) + delta))^2 (Xu et al. 2019).

    Args:
      features: (n, d) features.
      delta: the step Delta r > 0 by which each norm is pushed per update.

    Returns:
      the scalar loss (its value is delta^2; its gradient is -(2 delta / n) f_i / ||f_i||).

    Raises:
      LossError: for a non-2-D or empty batch, or delta <= 0.
    """
    check_batch(features, "afn")
    check_positive(delta, "delta", "afn")
    norms = feature_norms(features)
    radius = jax.lax.stop_gradient(norms) + delta
    return jnp.mean((norms - radius) ** 2)


def hard_feature_norm(features: jax.Array, radius: float = 25.0) -> jax.Array:
    """HAFN of one batch: (mean_i ||f_i|| - R)^2 (Xu et al. 2019, the authors' code).

    Args:
      features: (n, d) features.
      radius: the fixed target norm R > 0 (the authors' Office-31 default: 25.0).

    Returns:
      the scalar loss >= 0, zero when the batch's mean feature norm is R.

    Raises:
      LossError: for a non-2-D or empty batch, or radius <= 0.
    """
    check_batch(features, "hafn")
    check_positive(radius, "radius", "hafn")
    return (jnp.mean(feature_norms(features)) - radius) ** 2


def adaptive_feature_norm(source: jax.Array, target: jax.Array, delta: float = 1.0) -> jax.Array:
    """SAFN of the source batch plus SAFN of the target batch (tllib's ``AdaptiveFeatureNorm`` twice).

    Args:
      source: (n, d) source features.
      target: (m, d) target features.
      delta: the norm step Delta r > 0.

    Returns:
      the scalar loss, 2 delta^2 in value.

    Raises:
      LossError: for non-2-D inputs, different widths, an empty batch or delta <= 0.
    """
    check_feature_pair(source, target, "afn")
    return stepwise_feature_norm(source, delta) + stepwise_feature_norm(target, delta)


def hard_adaptive_feature_norm(source: jax.Array, target: jax.Array, radius: float = 25.0) -> jax.Array:
    """HAFN of the source batch plus HAFN of the target batch (the authors' HAFN code).

    Raises:
      LossError: for non-2-D inputs, different widths, an empty batch or radius <= 0.
    """
    check_feature_pair(source, target, "hafn")
    return hard_feature_norm(source, radius) + hard_feature_norm(target, radius)


@register_loss(
    "afn",
    description="stepwise adaptive feature norm: push every feature norm up by delta (SAFN)",
    reference="Xu et al., 'Larger Norm More Transferability: An Adaptive Feature Norm Approach for "
    "Unsupervised Domain Adaptation', ICCV 2019",
)
def afn_term(inputs: LossInputs, delta: float = 1.0) -> jax.Array:
    """SAFN of the step's source and target features (value 2 delta^2; the gradient enlarges norms)."""
    return adaptive_feature_norm(inputs.source_features, inputs.target_features, delta)


@register_loss(
    "hafn",
    description="hard adaptive feature norm: pull mean feature norms to a fixed radius (HAFN)",
    reference="Xu et al., 'Larger Norm More Transferability: An Adaptive Feature Norm Approach for "
    "Unsupervised Domain Adaptation', ICCV 2019",
)
def hafn_term(inputs: LossInputs, radius: float = 25.0) -> jax.Array:
    """HAFN of the step's source and target features."""
    return hard_adaptive_feature_norm(inputs.source_features, inputs.target_features, radius)
