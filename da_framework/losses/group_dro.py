"""Group distributionally robust optimisation (GroupDRO) over the labelled domains of a step.

Sagawa, Koh, Hashimoto & Liang, "Distributionally Robust Neural Networks for Group Shifts: On
the Importance of Regularization for Worst-Case Generalization", ICLR 2020, Algorithm 1, in
DomainBed's form (``domainbed/algorithms.py``, class ``GroupDRO``): one group per labelled
domain, group weights q kept across steps, starting at q = 1 (unnormalised, as DomainBed),
and at every step

    q_g <- q_g * exp(eta * L_g)   (L_g without gradient),   q <- q / sum(q),
    loss = sum_g q_g L_g,

with L_g the mean cross-entropy of domain g's batch.  DomainBed's default eta is 1e-2
(``groupdro_eta`` in ``domainbed/hparams_registry.py``).  The method is the term alone:
``--method group_dro`` (it replaces ``cross_entropy``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.checks import check_positive
from da_framework.losses.registry import LossInputs, StatefulTerm, TermState, register_stateful_loss


def group_losses(inputs: LossInputs) -> jax.Array:
    """(K,) mean cross-entropy of each labelled domain of the step."""
    return jnp.stack([
        jnp.mean(optax.softmax_cross_entropy_with_integer_labels(v.logits.astype(jnp.float32), v.labels))
        for v in inputs.sources()
    ])


def exponentiated_group_weights(q: jax.Array, losses: jax.Array, eta: float) -> jax.Array:
    """GroupDRO's update of the group weights: ``q * exp(eta * losses)``, normalised to sum 1."""
    q = q * jnp.exp(eta * jax.lax.stop_gradient(losses))
    return q / jnp.sum(q)


@register_stateful_loss(
    "group_dro",
    description="weighted source cross-entropy, weights moved towards the worst domain (GroupDRO)",
    reference="Sagawa et al., 'Distributionally Robust Neural Networks for Group Shifts', ICLR 2020 (DomainBed form)",
)
def group_dro_term(eta: float = 1e-2) -> StatefulTerm:
    """GroupDRO over the step's labelled domains; the state is the (K,) group weights q."""
    check_positive(eta, "eta", "group_dro")

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        del key
        return TermState(state=jnp.ones((len(inputs.sources()),), jnp.float32))

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        losses = group_losses(inputs)
        q = exponentiated_group_weights(term_state.state, losses, eta)
        metrics = {f"q{i}": q[i] for i in range(q.shape[0])}
        return jnp.dot(losses, q), q, metrics

    return StatefulTerm(init, apply)
