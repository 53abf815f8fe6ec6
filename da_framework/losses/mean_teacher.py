"""Mean-teacher consistency with an EMA teacher kept in the train state.

Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency
targets improve semi-supervised deep learning results", NeurIPS 2017; applied to domain
adaptation by French, Mackiewicz & Fisher, "Self-ensembling for visual domain adaptation",
ICLR 2018.

The teacher's weights are an exponential moving average of the student's (Tarvainen Eq. 1):

    theta'_t = alpha theta'_{t-1} + (1 - alpha) theta_t,

and the student is pulled towards the teacher's predictions on differently perturbed views
of the same unlabelled target examples (the squared difference of the softmaxes, averaged
over examples and classes, Tarvainen's consistency cost J):

    J = (1 / (n k)) sum_i || softmax(f_theta(x_i + eta)) - softmax(f_theta'(x_i + eta')) ||^2.

The teacher is the term's state (a copy of the initial student, moved by the term's
``update`` after every optimiser step with the hyper-parameter ``decay``); ``kd_teacher``
can read it (``kd_teacher(teacher=mean_teacher)``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from da_framework.data.augment import gaussian_noise, weak_augment
from da_framework.losses.checks import check_feature_pair, compute_dtype
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

EMA_DECAY = 0.99
"""The default alpha of the ``mean_teacher`` term (French et al. 2018 use 0.99)."""


def ema_update(teacher: Any, student: Any, decay: float | jax.Array) -> Any:
    """One EMA step  teacher <- decay * teacher + (1 - decay) * student, leaf by leaf (same dtypes)."""
    return jax.tree.map(lambda t, s: (decay * t + (1.0 - decay) * s).astype(t.dtype), teacher, student)


def consistency_loss(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Mean squared difference of the two softmaxes (Tarvainen & Valpola 2017); no gradient to the teacher.

    Args:
      student_logits: (n, k) student logits.
      teacher_logits: (n, k) teacher logits on another view of the same examples.

    Returns:
      the scalar mean over n and k of (softmax(student) - softmax(teacher))^2, in [0, 1].
    """
    check_feature_pair(student_logits, teacher_logits, "consistency_loss")
    if student_logits.shape != teacher_logits.shape:
        raise LossError(f"consistency_loss: student {student_logits.shape} and teacher {teacher_logits.shape} differ")
    dtype = compute_dtype(student_logits)
    p = jax.nn.softmax(student_logits.astype(dtype), axis=-1)
    q = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(dtype), axis=-1)
    return jnp.mean((p - q) ** 2)


@register_stateful_loss(
    "mean_teacher",
    description="consistency of student and EMA-teacher softmaxes on perturbed target views (mean teacher)",
    reference="Tarvainen & Valpola, NeurIPS 2017; French et al., 'Self-ensembling for visual domain adaptation', "
    "ICLR 2018",
)
def mean_teacher_term(pad: int = 2, noise_std: float = 0.05, decay: float = EMA_DECAY) -> StatefulTerm:
    """Consistency between the student and the EMA teacher (the term's state) on two perturbed target views.

    Args:
      pad: the random-translation padding of a view (pixels).
      noise_std: the Gaussian noise of a view.
      decay: alpha of the teacher's EMA, applied after every optimiser step.
    """
    if not 0.0 <= decay <= 1.0:
        raise LossError(f"mean_teacher: EMA decay must be in [0, 1], got {decay}; write e.g. mean_teacher(decay=0.99)")

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        del key
        if inputs.params is None:
            raise LossError("mean_teacher: init needs the model parameters (inputs.params); use it through a Method")
        return TermState(state=jax.tree.map(jnp.asarray, inputs.params))

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        if inputs.apply_model is None or inputs.target_inputs is None or inputs.params is None:
            raise LossError("mean_teacher re-runs the model on perturbed target views; use it through a Method in train()")
        k_s, k_t, n_s, n_t = jax.random.split(inputs.key, 4)
        x = inputs.target_inputs

        def view(k_aug: jax.Array, k_noise: jax.Array) -> jax.Array:
            return gaussian_noise(k_noise, weak_augment(k_aug, x, pad=pad, flip=False), noise_std)

        student = inputs.apply_model(inputs.params, view(k_s, n_s))[0]
        teacher = inputs.apply_model(term_state.state, view(k_t, n_t))[0]
        return consistency_loss(student, teacher), term_state.state, {}

    def update(teacher: Any, model_params: Any, progress: jax.Array) -> Any:
        del progress
        return ema_update(teacher, model_params, decay)

    return StatefulTerm(init, apply, update)
