"""Distillation of a large teacher into a small student on the (target) domain.

Knowledge distillation (Hinton, Vinyals & Dean, NeurIPS-W 2015, sec. 2): the student
minimises ``alpha * T^2 KL(q_teacher^T || q_student^T) + (1 - alpha) * CE(student, y)``
(:func:`da_framework.losses.distillation.distillation_loss`).  With ``alpha = 1`` no labels
are needed, so a teacher adapted to the target domain can be distilled on unlabelled
target data.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from da_framework.losses.distillation import distillation_loss
from da_framework.transfer.finetune import fit
from da_framework.transfer.weights import TransferError


def distill(
    teacher: Any,
    teacher_variables: dict[str, Any],
    student: Any,
    student_variables: dict[str, Any],
    tx: optax.GradientTransformation,
    x: np.ndarray,
    steps: int,
    key: jax.Array,
    *,
    y: np.ndarray | None = None,
    temperature: float = 4.0,
    alpha: float = 1.0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Trains ``student`` to match ``teacher``'s softened predictions on ``x``.

    Args:
      teacher, teacher_variables: the (frozen) teacher model returning ``(logits, features)``.
      student, student_variables: the student model and its initial variables.
      tx: the student's optimiser.
      x: inputs to distil on (e.g. target-domain training images).
      steps: optimiser steps.
      key: PRNG key.
      y: labels (needed when ``alpha < 1``).
      temperature: softmax temperature T.
      alpha: weight of the distillation term; ``1 - alpha`` weighs cross-entropy on ``y``.
      batch_size: examples per step.

    Returns:
      the student's new variables.
    """
    if not 0.0 <= alpha <= 1.0:
        raise TransferError(f"alpha must be in [0, 1], got {alpha}")
    if alpha < 1.0 and y is None:
        raise TransferError("alpha < 1 mixes in cross-entropy and needs labels y; pass y or set alpha=1")
    labels = np.zeros(len(x), np.int32) if y is None else y

    def kd(student_logits: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        del yb
        teacher_logits, _ = teacher.apply(teacher_variables, xb, train=False)
        return alpha * distillation_loss(student_logits, jax.lax.stop_gradient(teacher_logits), temperature)

    return fit(student, student_variables, tx, x, labels, steps, key, batch_size=batch_size, extra_loss=kd, ce_weight=1.0 - alpha)
