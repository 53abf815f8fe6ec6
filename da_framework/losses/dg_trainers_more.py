"""The terms of three more of DomainBed's update-level DG algorithms: SANDMask, IGA and RSC.

Like MLDG, Fish and ANDMask (:mod:`da_framework.losses.dg_trainers`), these change the
update, not the loss, so each is a trainer (:mod:`da_framework.methods.sandmask`,
:mod:`~da_framework.methods.iga`, :mod:`~da_framework.methods.rsc`), chosen by its term:
``register_loss(..., trainer="sandmask")``.  The term is the whole objective,
``--method sandmask``.  As a loss it is DomainBed's ERM objective, the mean over the step's
environments of their cross-entropy (for RSC, whose update pools the environments, the same
number when they have equal sizes, as in every step here).  Its keyword arguments are the
algorithm's hyper-parameters, with DomainBed's names and defaults
(``domainbed/hparams_registry.py`` at commit 22002ea; none of the three has a
dataset-specific default, so these are also its SMALL_IMAGES ones), read by the trainer.
The target batch is never used, as in DomainBed's domain generalisation.
"""

from __future__ import annotations

import jax

from da_framework.losses.dg_trainers import mean_environment_risk
from da_framework.losses.registry import LossInputs, register_loss


@register_loss(
    "sandmask",
    description="SAND-mask: a smooth gradient mask from the environments' sign agreement (DomainBed; its own trainer)",
    reference="Shahtalebi et al., 'SAND-mask: An Enhanced Gradient Masking Strategy for the Discovery of "
    "Invariances in Domain Generalization', 2021 (arXiv:2106.02266)",
    trainer="sandmask",
)
def sandmask_term(inputs: LossInputs, tau: float = 1.0, k: float = 10.0) -> jax.Array:
    """Mean environment cross-entropy; ``tau`` in [0, 1] is the agreement threshold, ``k`` > 0 the mask's steepness."""
    del tau, k
    return mean_environment_risk(inputs, "sandmask")


@register_loss(
    "iga",
    description="IGA: mean risk + penalty * spread of the environments' gradients, second order (DomainBed; its own trainer)",
    reference="Koyama & Yamaguchi, 'Out-of-distribution generalization with maximal invariant predictor' / "
    "'When is invariance useful in an Out-of-Distribution Generalization problem?', arXiv:2008.01883 "
    "(DomainBed cites v2), 2020",
    trainer="iga",
)
def iga_term(inputs: LossInputs, penalty: float = 1000.0) -> jax.Array:
    """Mean environment cross-entropy; ``penalty`` >= 0 weighs the gradient-spread penalty in the trainer."""
    del penalty
    return mean_environment_risk(inputs, "iga")


@register_loss(
    "rsc",
    description="RSC: mute the features with the largest true-class gradient, then train on the rest (DomainBed; its own trainer)",
    reference="Huang, Wang, Xing & Huang, 'Self-Challenging Improves Cross-Domain Generalization', ECCV 2020",
    trainer="rsc",
)
def rsc_term(inputs: LossInputs, rsc_f_drop_factor: float = 1 / 3, rsc_b_drop_factor: float = 1 / 3) -> jax.Array:
    """Mean environment cross-entropy; the two factors in [0, 1] are the shares of features and of examples muted."""
    del rsc_f_drop_factor, rsc_b_drop_factor
    return mean_environment_risk(inputs, "rsc")
