"""Spectral decoupling (SD): an L2 penalty on the logits.

Pezeshki, Kaba, Bengio, Courville, Precup & Lajoie, "Gradient Starvation: A Learning
Proclivity in Neural Networks", NeurIPS 2021 (arXiv:2011.09468), eq. 25: penalising the
squared network outputs decouples the learning dynamics of the features, so a dominant
(spurious) feature no longer starves the others.  The variant is DomainBed's
(``domainbed/algorithms.py``, ``SD``): ``sd_reg * mean(logits^2)``, the mean over all
examples of the pooled training environments and all classes, added to the pooled
cross-entropy.  Default ``sd_reg = 0.1`` (DomainBed's ``hparams_registry.py``; search space
``10**U(-5, -1)``).  Method: ``"cross_entropy + sd"``; the term includes its weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.dg_common import labelled_views
from da_framework.losses.registry import LossInputs, register_loss


def logit_l2(logits: jax.Array) -> jax.Array:
    """``mean(logits^2)`` over examples and classes (float32)."""
    return jnp.mean(jnp.square(logits.astype(jnp.float32)))


@register_loss(
    "sd",
    description="spectral decoupling: L2 penalty on the source logits (DomainBed's SD)",
    reference="Pezeshki et al., 'Gradient Starvation: A Learning Proclivity in Neural Networks', NeurIPS 2021, eq. 25",
)
def sd_term(inputs: LossInputs, sd_reg: float = 0.1) -> jax.Array:
    """``sd_reg * mean(logits^2)`` over the step's labelled examples."""
    views = labelled_views(inputs, "sd")
    return sd_reg * logit_l2(jnp.concatenate([v.logits for v in views]))
