"""Supervised classification loss on the labelled source batch.

Softmax cross-entropy with integer labels, optionally with uniform label smoothing
(Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
sec. 7: targets (1 - eps) one_hot(y) + eps / k).

Bad inputs never score silently.  Everything static (shapes, an empty batch, the smoothing
value, concrete labels outside [0, k)) raises :class:`LossError` at call or trace time.
Labels traced inside ``jax.jit`` cannot be checked then, so an example whose label is
outside [0, k) (e.g. -1 for "unlabelled", or k) contributes NaN: the batch's loss is NaN and
the trainer's non-finite-loss check stops the run with its message, instead of the label
being wrapped to class k - 1 or clipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from da_framework.losses.registry import LossError, LossInputs, register_loss


def _check_static(logits: jax.Array, labels: jax.Array, label_smoothing: float | jax.Array) -> None:
    """The checks that can run at trace time; concrete labels are range-checked too."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise LossError(
            f"cross_entropy: expected logits (n, k) and labels (n,), got {logits.shape} and {labels.shape}"
        )
    n, k = logits.shape
    if n == 0 or k == 0:
        raise LossError(f"cross_entropy: empty batch or no classes (logits shape {logits.shape})")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise LossError(f"cross_entropy: labels must be integer class ids, got dtype {labels.dtype}; cast them")
    try:
        smoothing = float(label_smoothing)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        smoothing = None  # traced: the caller's responsibility
    if smoothing is not None and not 0.0 <= smoothing < 1.0:
        raise LossError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing!r}")
    try:
        concrete = np.asarray(labels)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return  # traced labels: out-of-range ones make the loss NaN (module doc)
    bad = (concrete < 0) | (concrete >= k)
    if bad.any():
        raise LossError(
            f"cross_entropy: labels must be in [0, {k}), got {concrete[bad][:5].tolist()}; "
            "drop unlabelled (-1) examples or fix num_classes"
        )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of integer ``labels`` under ``logits``.

    Args:
      logits: (n, k) unnormalised scores, n >= 1.
      labels: (n,) integer class ids in [0, k).
      label_smoothing: eps in [0, 1), mass spread uniformly over the k classes (Szegedy et
        al., 2016).

    Returns:
      the scalar mean loss (float32 even for bfloat16 logits); NaN when a traced label is
      outside [0, k) (see the module doc).

    Raises:
      LossError: for bad shapes, an empty batch, non-integer labels, smoothing outside
        [0, 1), or concrete labels outside [0, k).
    """
    labels = jnp.asarray(labels)
    _check_static(logits, labels, label_smoothing)
    logits = logits.astype(jnp.float32)
    k = logits.shape[-1]
    valid = (labels >= 0) & (labels < k)
    safe = jnp.where(valid, labels, 0)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(safe, k), label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.mean(jnp.where(valid, per_example, jnp.nan))


@register_loss(
    "cross_entropy",
    description="softmax cross-entropy on labelled source examples (empirical risk)",
    reference="Vapnik, 'Principles of Risk Minimization for Learning Theory', NeurIPS 1991",
)
def cross_entropy_term(inputs: LossInputs, label_smoothing: float = 0.0) -> jax.Array:
    """Source cross-entropy: the supervised part of every method (see :func:`cross_entropy`)."""
    return cross_entropy(inputs.source_logits, inputs.source_labels, label_smoothing)
