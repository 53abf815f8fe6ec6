"""Soft labels and knowledge distillation.

* Knowledge distillation: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
  Network", NeurIPS Deep Learning Workshop 2015, sec. 2:  with q^T = softmax(z / T),
  L_KD = T^2 * mean_i KL(q^T(teacher_i) || q^T(student_i))  (the T^2 keeps gradient
  magnitudes comparable across temperatures).
* Soft-target cross-entropy: -mean_i sum_k q_ik log softmax(z_i)_k for any target
  distributions q (soft labels).
* Label smoothing: Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception
  Architecture for Computer Vision", CVPR 2016, sec. 7:  q = (1 - eps) onehot(y) + eps / k.

The registered term ``kd_teacher`` transfers a teacher's predictions on the *target* batch to
the student (teacher-to-student transfer across domains).  The teacher is, by default, the
model at the start of training, which the term keeps as its state; that is meaningful when
training starts from a trained model (weight transfer); with a random initialisation the
teacher is that random model.  ``kd_teacher(teacher=<key>)`` reads another term's state
instead, e.g. ``mean_teacher``'s EMA teacher.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_batch, check_positive, compute_dtype
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, register_stateful_loss
from da_framework.losses.regularizers import anchored_term


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """Label-smoothed one-hot targets (1 - eps) onehot(y) + eps / k (Szegedy et al. 2016, sec. 7).

    Args:
      labels: (n,) integer class ids in [0, num_classes).
      num_classes: k >= 1.
      smoothing: eps in [0, 1].

    Returns:
      (n, k) float32 target distributions (rows sum to 1).
    """
    if labels.ndim != 1:
        raise LossError(f"smooth_one_hot: expected (n,) integer labels, got shape {labels.shape}")
    if not 0.0 <= smoothing <= 1.0:
        raise LossError(f"smooth_one_hot: smoothing must be in [0, 1], got {smoothing!r}")
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return (1.0 - smoothing) * one_hot + smoothing / num_classes


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy -sum_k q_k log softmax(z)_k against soft targets q.

    Args:
      logits: (n, k) student scores.
      targets: (n, k) target distributions (rows sum to 1; not differentiated through
        unless the caller wants it).

    Returns:
      the scalar mean loss in float32 (float64 inputs stay float64).

    Raises:
      LossError: for mismatched or non-2-D shapes, or an empty batch.
    """
    check_batch(logits, "soft_cross_entropy", "classes")
    if targets.shape != logits.shape:
        raise LossError(f"soft_cross_entropy: targets shape {targets.shape} must equal logits shape {logits.shape}")
    dtype = compute_dtype(logits)
    logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    return -jnp.mean(jnp.sum(targets.astype(dtype) * logp, axis=-1))


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 2.0) -> jax.Array:
    """Temperature-scaled knowledge distillation T^2 KL(q_teacher^T || q_student^T) (Hinton et al. 2015).

    Args:
      student_logits: (n, k) student scores (receive the gradient).
      teacher_logits: (n, k) teacher scores (wrap in ``jax.lax.stop_gradient`` for a fixed teacher).
      temperature: T > 0.

    Returns:
      the scalar mean KL divergence times T^2, >= 0, zero iff the softened predictions agree;
      float32 (float64 inputs stay float64).

    Raises:
      LossError: for mismatched or non-2-D shapes, an empty batch or temperature <= 0.
    """
    check_batch(student_logits, "distillation_loss", "classes")
    if teacher_logits.shape != student_logits.shape:
        raise LossError(
            f"distillation_loss: teacher logits {teacher_logits.shape} and student logits "
            f"{student_logits.shape} must have the same shape (same examples, same classes)"
        )
    check_positive(temperature, "temperature", "distillation_loss")
    dtype = compute_dtype(student_logits)
    log_q_s = jax.nn.log_softmax(student_logits.astype(dtype) / temperature, axis=-1)
    log_q_t = jax.nn.log_softmax(teacher_logits.astype(dtype) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_q_t) * (log_q_t - log_q_s), axis=-1)
    return temperature**2 * jnp.mean(kl)


@register_stateful_loss(
    "kd_teacher",
    description="distil a teacher's softened target predictions into the model (T^2 KL)",
    reference="Hinton et al., 'Distilling the Knowledge in a Neural Network', NeurIPS-W 2015",
)
def kd_teacher_term(temperature: float = 2.0, teacher: str = "anchor") -> StatefulTerm:
    """KD on the target batch from the initial model (``teacher="anchor"``) or another term's state (its key)."""
    check_positive(temperature, "temperature", "kd_teacher")

    def loss(inputs: LossInputs, anchor: Any) -> jax.Array:
        if inputs.apply_model is None or inputs.target_inputs is None:
            raise LossError("kd_teacher: needs inputs.apply_model and inputs.target_inputs (set by the train step)")
        states = inputs.term_states or {}
        if teacher != "anchor" and teacher not in states:
            raise LossError(
                f"kd_teacher: no term keyed {teacher!r} keeps a state in this method (terms with state: "
                f"{', '.join(sorted(states)) or 'none'}); write kd_teacher(teacher=<such a key>) or teacher=anchor"
            )
        params = jax.lax.stop_gradient(anchor if teacher == "anchor" else states[teacher])
        teacher_logits, _ = inputs.apply_model(params, inputs.target_inputs, train=False)
        return distillation_loss(inputs.target_logits, jax.lax.stop_gradient(teacher_logits), temperature)

    return anchored_term(loss)
