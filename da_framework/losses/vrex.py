"""V-REx: the variance of the environments' risks (Risk Extrapolation).

Krueger, Caballero, Jacobsen, Zhang, Binas, Zhang, Le Priol & Courville, "Out-of-Distribution
Generalization via Risk Extrapolation (REx)", ICML 2021, eq. 8 (V-REx):
``mean_e R_e + beta * Var_e(R_e)``.  The variant is DomainBed's (``domainbed/algorithms.py``,
``VREx``): the population variance ``mean_e (R_e - mean R)^2`` of the per-environment mean
cross-entropies, weighted by ``vrex_lambda`` from step ``vrex_penalty_anneal_iters`` on and
by 1.0 before (:func:`~da_framework.losses.dg_common.anneal_weight`).  Defaults are
DomainBed's (``domainbed/hparams_registry.py``): ``vrex_lambda = 1e1``,
``vrex_penalty_anneal_iters = 500``; search space ``10**U(-1, 5)`` and ``int(10**U(0, 4))``.

Method: ``"cross_entropy + vrex"`` (cross_entropy over the equally sized environment batches
is DomainBed's ``mean_e R_e``); the term includes its weight, so leave its method weight at 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.dg_common import DOMAINBED_STEPS, anneal_weight, environment_risks, labelled_views
from da_framework.losses.registry import LossInputs, register_loss


def risk_variance(risks: jax.Array) -> jax.Array:
    """Population variance ``mean((r - mean r)^2)`` of a (K,) vector of environment risks (0 for K = 1)."""
    return jnp.mean((risks - jnp.mean(risks)) ** 2)


@register_loss(
    "vrex",
    description="V-REx: variance of the source environments' risks, DomainBed's anneal",
    reference="Krueger et al., 'Out-of-Distribution Generalization via Risk Extrapolation', ICML 2021; DomainBed's VREx",
    optimizer_reset="vrex_penalty_anneal_iters",  # DomainBed re-creates its Adam at that step
)
def vrex_term(
    inputs: LossInputs,
    vrex_lambda: float = 1e1,
    vrex_penalty_anneal_iters: float = 500,
    steps_of: float = DOMAINBED_STEPS,
) -> jax.Array:
    """``weight * Var_e(R_e)`` over the step's labelled environments."""
    risks = environment_risks(labelled_views(inputs, "vrex"))
    return anneal_weight(inputs.progress, vrex_lambda, vrex_penalty_anneal_iters, 1.0, steps_of) * risk_variance(risks)
