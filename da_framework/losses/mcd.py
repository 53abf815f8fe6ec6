"""Maximum classifier discrepancy (MCD): the discrepancy and the second classifier.

Saito, Watanabe, Ushiku & Harada, "Maximum Classifier Discrepancy for Unsupervised Domain
Adaptation", CVPR 2018.  Two classifiers F1, F2 on a shared generator G; the discrepancy on
a target example is the mean absolute difference of their softmaxes (Eq. 1):

    d(p1, p2) = (1 / K) sum_k |p1k - p2k|.

MCD alternates three steps (:mod:`da_framework.methods.mcd`): (A) train G, F1, F2 on source
cross-entropy; (B) train F1, F2 to *maximise* the target discrepancy while keeping the
source loss; (C) train G to minimise it, ``num_k`` times.  F1 is the model's own head; F2 is
this term's auxiliary head.  As a plain term (step A), ``mcd`` is F2's source cross-entropy.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.checks import check_feature_pair, compute_dtype
from da_framework.losses.mdd import AdversarialHead
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

SecondClassifier = partial(AdversarialHead, hidden=())
"""F2: a linear head on the features, like the model's own head F1 (called on (features, logits))."""


def classifier_discrepancy(logits1: jax.Array, logits2: jax.Array) -> jax.Array:
    """MCD's discrepancy (Saito et al. 2018, Eq. 1): mean over examples and classes of |p1 - p2|.

    Args:
      logits1, logits2: (n, k) logits of the two classifiers on the same examples.

    Returns:
      the scalar discrepancy in [0, 2/k]; zero iff the two softmaxes agree; symmetric.
    """
    check_feature_pair(logits1, logits2, "classifier_discrepancy")
    if logits1.shape != logits2.shape:
        raise LossError(f"classifier_discrepancy: logits {logits1.shape} and {logits2.shape} must have the same shape")
    dtype = compute_dtype(logits1)
    p1 = jax.nn.softmax(logits1.astype(dtype), axis=-1)
    p2 = jax.nn.softmax(logits2.astype(dtype), axis=-1)
    return jnp.mean(jnp.abs(p1 - p2))


def second_classifier_logits(params: Any, features: jax.Array, logits: jax.Array) -> jax.Array:
    """F2's logits (n, k) on ``features`` (n, d); ``logits`` (n, k) of F1 only fix k."""
    return SecondClassifier().apply({"params": params}, (features, logits))


@register_stateful_loss(
    "mcd",
    description="maximum classifier discrepancy: two heads, three-step schedule (custom step; here F2's source CE)",
    reference="Saito et al., 'Maximum Classifier Discrepancy for Unsupervised Domain Adaptation', CVPR 2018",
    trainer="mcd",
)
def mcd_term(num_k: int = 4, discrepancy_weight: float = 1.0) -> StatefulTerm:
    """F2 (its parameters are the term's) and, as a term, F2's source cross-entropy (step A).

    ``num_k`` and ``discrepancy_weight`` are read by the MCD trainer (:mod:`da_framework.methods.mcd`).
    """
    del num_k, discrepancy_weight

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        example = (inputs.source_features, inputs.source_logits)
        return TermState(params=SecondClassifier().init(key, example)["params"])

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        logits2 = second_classifier_logits(term_state.params, inputs.source_features, inputs.source_logits)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits2.astype(jnp.float32), inputs.source_labels)
        return jnp.mean(ce), term_state.state, {}

    return StatefulTerm(init, apply)
