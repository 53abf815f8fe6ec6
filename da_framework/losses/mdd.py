"""Margin disparity discrepancy (MDD).

Zhang, Liu, Long & Jordan, "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019.

An auxiliary (adversarial) classifier f' reads the gradient-reversed features psi(x) and plays
a minimax game against the feature extractor over the empirical margin disparity discrepancy
(Eq. 25 / 29), with margin factor gamma = exp(rho) and f's hard predictions h_f held fixed:

    D_gamma = E_t[ L'(f'(psi(x_t)), h_f(x_t)) ] - gamma * E_s[ L(f'(psi(x_s)), h_f(x_s)) ],
    L  = cross-entropy:            -log sigma_{h_f}(f'),
    L' = modified target loss:      log(1 - sigma_{h_f}(f')).

f' maximises D_gamma (agree with f on the source, disagree on the target); psi minimises it.
:func:`margin_disparity_discrepancy` returns the quantity f' *minimises*,

    L_MDD = gamma * CE_s - E_t[ log(1 - sigma_{h_f}(f'_t)) ]  ( = -D_gamma ),

and the registered term applies it through a gradient reversal layer, so one descent step
trains f' and, reversed, the features.  As in the authors' code the reversal strength warms
up to 0.1 (DANN ramp times ``max_coeff``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from da_framework.losses.adversarial import dann_ramp, gradient_reversal
from da_framework.losses.checks import check_feature_pair, check_positive, compute_dtype
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss


def margin_disparity_discrepancy(
    source_logits: jax.Array,
    source_adv_logits: jax.Array,
    target_logits: jax.Array,
    target_adv_logits: jax.Array,
    margin: float = 4.0,
    eps: float = 1e-6,
) -> jax.Array:
    """The MDD objective of the adversarial classifier (Zhang et al. 2019, Eq. 29), to minimise.

    Args:
      source_logits: (n_s, k) main-classifier logits on source (only their argmax is used).
      source_adv_logits: (n_s, k) adversarial-classifier logits on source.
      target_logits: (n_t, k) main-classifier logits on target (only their argmax is used).
      target_adv_logits: (n_t, k) adversarial-classifier logits on target.
      margin: gamma > 0, the margin factor (weight of the source disparity).
      eps: added inside log(1 - p) for finiteness when p = 1.

    Returns:
      gamma * mean_s CE(f'_s, argmax f_s) - mean_t log(1 - softmax(f'_t)[argmax f_t] + eps),
      i.e. minus the empirical margin disparity discrepancy; no gradient reaches the main logits.

    Raises:
      LossError: for mismatched shapes, empty batches or a non-positive margin.
    """
    check_feature_pair(source_logits, target_logits, "mdd")
    check_feature_pair(source_adv_logits, target_adv_logits, "mdd")
    if source_logits.shape != source_adv_logits.shape or target_logits.shape != target_adv_logits.shape:
        raise LossError(
            f"mdd: main logits {source_logits.shape}/{target_logits.shape} and adversarial logits "
            f"{source_adv_logits.shape}/{target_adv_logits.shape} must have the same shapes"
        )
    check_positive(margin, "margin", "mdd")
    dtype = compute_dtype(source_adv_logits)
    pred_s = jnp.argmax(jax.lax.stop_gradient(source_logits), axis=-1)
    pred_t = jnp.argmax(jax.lax.stop_gradient(target_logits), axis=-1)
    source_ce = optax.softmax_cross_entropy_with_integer_labels(source_adv_logits.astype(dtype), pred_s)
    source_disparity = jnp.mean(source_ce)
    p_t = jnp.take_along_axis(jax.nn.softmax(target_adv_logits.astype(dtype), axis=-1), pred_t[:, None], axis=-1)[:, 0]
    target_disparity = jnp.mean(jnp.log(jnp.clip(1.0 - p_t + eps, max=1.0)))
    return margin * source_disparity - target_disparity


class AdversarialHead(nn.Module):
    """MDD's auxiliary classifier f': Dense -> ReLU blocks -> one logit per class.

    Called on ``(features, logits)``: the logits only fix the number of classes, so the
    head needs no configuration.
    """

    hidden: Sequence[int] = (256,)

    @nn.compact
    def __call__(self, x: tuple[jax.Array, jax.Array]) -> jax.Array:
        """Maps ``(features (n, d), logits (n, k))`` to adversarial logits (n, k)."""
        features, logits = x
        h = features
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(logits.shape[-1])(h)


@register_stateful_loss(
    "mdd",
    description="margin disparity discrepancy with an adversarial classifier head on reversed features (MDD)",
    reference="Zhang et al., 'Bridging Theory and Algorithm for Domain Adaptation', ICML 2019",
)
def mdd_term(margin: float = 4.0, gamma: float = 10.0, max_coeff: float = 0.1) -> StatefulTerm:
    """MDD: the adversarial head (the term's parameters) minimises L_MDD; the features, through reversal, maximise it."""
    head = AdversarialHead()

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        return TermState(params=head.init(key, (inputs.source_features, inputs.source_logits))["params"])

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        check_feature_pair(inputs.source_features, inputs.target_features, "mdd")
        n_s = inputs.source_features.shape[0]
        coeff = max_coeff * dann_ramp(inputs.progress, gamma)
        feats = gradient_reversal(jnp.concatenate([inputs.source_features, inputs.target_features]), coeff)
        logits = jnp.concatenate([inputs.source_logits, inputs.target_logits])
        adv = head.apply({"params": term_state.params}, (feats, logits))
        loss = margin_disparity_discrepancy(inputs.source_logits, adv[:n_s], inputs.target_logits, adv[n_s:], margin=margin)
        return loss, term_state.state, {}

    return StatefulTerm(init, apply)
