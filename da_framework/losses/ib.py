"""Information-bottleneck penalty: the variance of the features within each environment.

Ahuja, Caballero, Zhang, Gagnon-Audet, Bengio, Mitliagkas & Rish, "Invariance Principle
Meets Information Bottleneck for Out-of-Distribution Generalization", NeurIPS 2021
(IB-ERM and IB-IRM).  The variant is DomainBed's (``domainbed/algorithms.py``, ``IB_ERM``
and ``IB_IRM``): per environment the mean over feature dimensions of the unbiased (n - 1)
variance over the minibatch, averaged over environments, weighted by ``ib_lambda`` from step
``ib_penalty_anneal_iters`` on and by 0 before (:func:`~da_framework.losses.dg_common.anneal_weight`).
Defaults ``ib_lambda = 1e2``, ``ib_penalty_anneal_iters = 500`` (DomainBed's
``hparams_registry.py``; search spaces ``10**U(-1, 5)`` and ``int(10**U(0, 4))``).

Methods: IB_ERM is ``"cross_entropy + ib"``, IB_IRM ``"cross_entropy + irm + ib"``; the term
includes its weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.checks import compute_dtype
from da_framework.losses.dg_common import DOMAINBED_STEPS, anneal_weight, labelled_views
from da_framework.losses.registry import LossInputs, register_loss


def feature_variance(features: jax.Array) -> jax.Array:
    """Mean over dimensions of the unbiased variance over examples of (n, d) features, n >= 2."""
    return jnp.mean(jnp.var(features.astype(compute_dtype(features)), axis=0, ddof=1))


@register_loss(
    "ib",
    description="information bottleneck: within-environment feature variance (DomainBed's IB_ERM / IB_IRM)",
    reference="Ahuja et al., 'Invariance Principle Meets Information Bottleneck for OOD Generalization', NeurIPS 2021",
    optimizer_reset="ib_penalty_anneal_iters",  # DomainBed re-creates its Adam at that step
)
def ib_term(
    inputs: LossInputs,
    ib_lambda: float = 1e2,
    ib_penalty_anneal_iters: float = 500,
    steps_of: float = DOMAINBED_STEPS,
) -> jax.Array:
    """``weight * mean_e feature_variance(features_e)`` over the step's labelled environments."""
    views = labelled_views(inputs, "ib", min_examples=2)
    penalty = jnp.mean(jnp.stack([feature_variance(v.features) for v in views]))
    return anneal_weight(inputs.progress, ib_lambda, ib_penalty_anneal_iters, 0.0, steps_of) * penalty
