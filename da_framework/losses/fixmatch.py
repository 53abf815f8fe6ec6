"""Confidence-thresholded pseudo-labels with weak and strong augmentation (FixMatch).

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020, Eq. (4):

    L_u = (1 / n) sum_i 1[max_k q_ik >= tau] * CE(argmax_k q_ik, p(y | A(x_i))),
    q_i = softmax(f(alpha(x_i)))   (no gradient),

with alpha a weak (flip-and-shift) and A a strong (RandAugment + Cutout) augmentation of the
same unlabelled target example.  The mean is over the whole batch, so the loss also shrinks
when few examples pass the threshold tau.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from da_framework.data.augment import strong_augment, weak_augment
from da_framework.losses.checks import check_feature_pair, compute_dtype
from da_framework.losses.registry import LossError, LossInputs, register_loss


def confidence_mask(logits: jax.Array, threshold: float) -> jax.Array:
    """(n,) float mask: 1 where the softmax's largest probability is >= ``threshold``, else 0.

    NaN where the row's softmax is NaN (NaN or +inf logits), so a diverged weak view makes
    the loss NaN (and the trainer stops) instead of being masked out as "unconfident".
    """
    probs = jax.nn.softmax(logits.astype(compute_dtype(logits)), axis=-1)
    top = jnp.max(probs, axis=-1)
    return jnp.where(jnp.isnan(top), jnp.nan, (top >= threshold).astype(jnp.float32)).astype(jnp.float32)


def fixmatch_loss(weak_logits: jax.Array, strong_logits: jax.Array, threshold: float = 0.95) -> jax.Array:
    """FixMatch's unlabelled loss (Sohn et al. 2020, Eq. 4).

    Args:
      weak_logits: (n, k) logits on the weakly augmented view; used without gradient.
      strong_logits: (n, k) logits on the strongly augmented view of the same examples.
      threshold: tau in [0, 1]; pseudo-labels less confident than this are masked out.

    Returns:
      mean over all n examples of mask_i * CE(strong_logits_i, argmax weak_logits_i); NaN
      when any weak or strong logit row is NaN (NaN is never masked to 0).

    Raises:
      LossError: for mismatched shapes, an empty batch or a threshold outside [0, 1].
    """
    check_feature_pair(weak_logits, strong_logits, "fixmatch")
    if weak_logits.shape != strong_logits.shape:
        raise LossError(f"fixmatch: weak {weak_logits.shape} and strong {strong_logits.shape} logits must match")
    if isinstance(threshold, (int, float)) and not 0.0 <= threshold <= 1.0:
        raise LossError(f"fixmatch: threshold must be in [0, 1], got {threshold}")
    weak = jax.lax.stop_gradient(weak_logits)
    pseudo = jnp.argmax(weak, axis=-1)
    ce = optax.softmax_cross_entropy_with_integer_labels(strong_logits.astype(compute_dtype(strong_logits)), pseudo)
    return jnp.mean(confidence_mask(weak, threshold) * ce)


@register_loss(
    "fixmatch",
    description="confidence-thresholded pseudo-labels from a weak view, CE on a strong view (FixMatch)",
    reference="Sohn et al., 'FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence', "
    "NeurIPS 2020",
)
def fixmatch_term(
    inputs: LossInputs,
    threshold: float = 0.95,
    num_ops: int = 2,
    magnitude: float = 0.5,
    pad: int = 2,
    flip: bool = False,
) -> jax.Array:
    """FixMatch on the target batch: weak view (pad-and-crop, optional flip) -> pseudo-labels -> strong view.

    ``flip`` is off by default because mirroring changes digits; with ``pad=0`` and no flip
    the step's own target logits serve as the weak view (one forward pass fewer).
    """
    if inputs.apply_model is None or inputs.target_inputs is None or inputs.params is None:
        raise LossError("fixmatch re-runs the model on augmented target views; use it through a Method in train()")
    k_weak, k_strong = jax.random.split(inputs.key)
    x = inputs.target_inputs
    if pad == 0 and not flip:
        weak_logits = inputs.target_logits
    else:
        weak_logits = inputs.apply_model(inputs.params, weak_augment(k_weak, x, pad=pad, flip=flip))[0]
    strong_view = strong_augment(k_strong, x, num_ops=num_ops, magnitude=magnitude)
    strong_logits = inputs.apply_model(inputs.params, strong_view)[0]
    return fixmatch_loss(weak_logits, strong_logits, threshold)
