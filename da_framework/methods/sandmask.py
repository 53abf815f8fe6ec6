"""The SAND-mask training step: a smooth mask on the mean gradient from the environments' agreement.

Shahtalebi et al., "SAND-mask: An Enhanced Gradient Masking Strategy for the Discovery of
Invariances in Domain Generalization", 2021 (arXiv:2106.02266), in DomainBed's form
(facebookresearch/DomainBed, ``domainbed/algorithms.py`` at commit 22002ea, class ``SANDMask``,
method ``mask_grads``).  With g_e the gradient of
environment e's cross-entropy (its own forward pass) at the current parameters, for every
parameter tensor, elementwise over its entries:

    a   = |mean_e sign(g_e)|                       (the sign agreement, in [0, 1])
    lam = 1 / var_e(g_e)                           (unbiased variance over the K environments)
    m   = max(tanh(k * lam * (a - tau)), 0)        (in [0, 1))
    g   = m * mean_e g_e / (1e-10 + sum(m) / size(m))
    theta <- the run's optimiser step on g.

As in DomainBed, a NaN variance becomes 1e-17 and a NaN mask entry (``inf * 0``: a zero
variance where a == tau) becomes 1e-17; a zero variance elsewhere gives ``lam = inf``, so
m = 1 where a > tau and 0 where a < tau.  The reported loss is the mean environment loss.
Since a <= 1, DomainBed's default ``tau=1`` gives m = 0 wherever the variance is positive, so
an update of (almost) zero: its sweep's other samples draw tau from U(0, 1).

Differences from DomainBed: the term's weight and schedule multiply the masked gradient
(DomainBed has neither: weight 1, constant schedule, the same update).  DomainBed's
optimiser is Adam(lr, weight_decay, betas=(0.9, 0.999)); here it is the run's optimiser, the
same under DomainBed's protocol (``optimizer=adam``, constant rate, weight decay 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.dg_trainers import checked_number, trainer_term
from da_framework.methods.andmask import make_masked_gradient_step
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.step import TrainStep

NAN_FILL = 1e-17  # DomainBed's value for a NaN variance or mask entry


def sand_mask(grads: jax.Array, tau: float, k: float) -> tuple[jax.Array, jax.Array]:
    """DomainBed's SANDMask ``mask_grads`` for one parameter tensor.

    Args:
      grads: (K, ...) the K >= 2 environments' gradients of one parameter tensor.
      tau: the agreement threshold in [0, 1].
      k: the steepness of the tanh, > 0.

    Returns:
      ``(masked gradient, mask)``: the gradient (shape ``grads.shape[1:]``) and the mask in [0, 1].
    """
    variance = jnp.var(grads, axis=0, ddof=1)
    variance = jnp.where(jnp.isnan(variance), NAN_FILL, variance)
    agreement = jnp.abs(jnp.mean(jnp.sign(grads), axis=0))
    mask = jnp.maximum(jnp.tanh(k * (1.0 / variance) * (agreement - tau)), 0.0)
    mask = jnp.where(jnp.isnan(mask), NAN_FILL, mask)
    kept = jnp.sum(mask) / mask.size
    return mask * jnp.mean(grads, axis=0) * (1.0 / (1e-10 + kept)), mask


def make_sandmask_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds SAND-mask's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the
    method is the ``sandmask`` term alone (``tau`` in [0, 1], ``k`` > 0; its weight and
    schedule multiply the masked gradient), the source batch holds ``num_sources`` >= 2
    environments and the target batch is not read.  Metrics: ``loss`` (the weighted mean
    environment loss, also ``loss/<key>``), ``loss/<key>/mask_mean`` (the mean mask value over
    all gradient entries), ``source_train_accuracy``, ``grad_norm`` (of the masked gradient).
    """
    del num_targets
    term, hp = trainer_term(method, "sandmask", num_sources, compute_dtype)
    tau = checked_number(hp["tau"], "sandmask", "tau", lambda v: 0 <= v <= 1, "a number in [0, 1]")
    k = checked_number(hp["k"], "sandmask", "k", lambda v: 0 < v < float("inf"), "a finite number > 0")
    return make_masked_gradient_step(model, term, lambda g: sand_mask(g, tau, k), "mask_mean", tx, total_steps,
                                     input_key, num_sources)
