"""IRMv1: the invariance penalty of Invariant Risk Minimization, over the step's environments.

Arjovsky, Bottou, Gulrajani & Lopez-Paz, "Invariant Risk Minimization", arXiv:1907.02893
(2019), eq. IRMv1: the squared gradient of each environment's risk with respect to a dummy
scalar classifier ``w = 1.0`` multiplying the logits.  The variant is DomainBed's
(``domainbed/algorithms.py``, ``IRM._irm_penalty``): the unbiased estimate of the squared
gradient from the two halves of each environment's minibatch,

    penalty_e = dR(w z[::2], y[::2])/dw * dR(w z[1::2], y[1::2])/dw   at w = 1,

averaged over environments, and DomainBed's total ``mean_e R_e + weight * penalty`` with
``weight = irm_lambda`` from step ``irm_penalty_anneal_iters`` on and 1.0 before
(:func:`~da_framework.losses.dg_common.anneal_weight`).  Defaults are DomainBed's
(``domainbed/hparams_registry.py``): ``irm_lambda = 1e2``, ``irm_penalty_anneal_iters = 500``;
its search space is ``10**U(-1, 5)`` and ``int(10**U(0, 4))``.

Method: ``"cross_entropy + irm"`` (DomainBed's IRM: cross_entropy over the pooled, equally
sized environment batches is the mean of their risks).  The term includes its weight, so
leave its method weight at 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.classification import cross_entropy
from da_framework.losses.dg_common import DOMAINBED_STEPS, anneal_weight, labelled_views
from da_framework.losses.registry import LossError, LossInputs, register_loss


def irm_penalty(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """DomainBed's IRMv1 penalty of one environment: the product of the two halves' dR/dw at w = 1.

    Args:
      logits: (n, k) logits of one environment, n >= 2 (even rows form one half, odd rows
        the other).
      labels: (n,) integer labels.

    Returns:
      the scalar penalty (float32); it can be negative (an unbiased estimate of a square).
    """
    if logits.ndim != 2 or logits.shape[0] < 2:
        raise LossError(f"irm_penalty: needs (n, k) logits with n >= 2 (two halves), got shape {logits.shape}")
    logits = logits.astype(jnp.float32)

    def half_grad(z: jax.Array, y: jax.Array) -> jax.Array:
        return jax.grad(lambda w: cross_entropy(z * w, y))(jnp.float32(1.0))

    return half_grad(logits[::2], labels[::2]) * half_grad(logits[1::2], labels[1::2])


@register_loss(
    "irm",
    description="IRMv1 penalty over the source environments, DomainBed's two-halves estimate and anneal",
    reference="Arjovsky et al., 'Invariant Risk Minimization', arXiv:1907.02893 (2019); DomainBed's IRM",
    optimizer_reset="irm_penalty_anneal_iters",  # DomainBed re-creates its Adam at that step
)
def irm_term(
    inputs: LossInputs,
    irm_lambda: float = 1e2,
    irm_penalty_anneal_iters: float = 500,
    steps_of: float = DOMAINBED_STEPS,
) -> jax.Array:
    """``weight * mean_e irm_penalty(logits_e, y_e)`` over the step's labelled environments."""
    views = labelled_views(inputs, "irm", min_examples=2)
    penalty = jnp.mean(jnp.stack([irm_penalty(v.logits, v.labels) for v in views]))
    return anneal_weight(inputs.progress, irm_lambda, irm_penalty_anneal_iters, 1.0, steps_of) * penalty
