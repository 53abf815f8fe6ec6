"""Maximum classifier discrepancy (MCD): the discrepancy and the second classifier.

Saito, Watanabe, Ushiku & Harada, "Maximum Classifier Discrepancy for Unsupervised Domain
Adaptation", CVPR 2018.  Two classifiers F1, F2 on a shared generator G; the discrepancy on
a target example is the mean absolute difference of their softmaxes (Eq. 1):

    d(p1, p2) = (1 / K) sum_k |p1k - p2k|.

MCD alternates three steps (:mod:`da_framework.methods.mcd`): (A) train G, F1, F2 on source
cross-entropy; (B) train F1, F2 to *maximise* the target discrepancy while keeping the
source loss; (C) train G to minimise it, ``num_k`` times.  F1 is the model's own head; F2 is
this term's auxiliary head.  As a plain term (step A), ``mcd`` is F2's source cross-entropy.

F2 has F1's architecture.  By default both are one Dense layer on the features.  tllib's
digits MCD (``examples/domain_adaptation/image_classification/mcd.py``) uses two
``ImageClassifierHead`` (Dropout 0.5 -> Linear 1024 -> BatchNorm1d -> ReLU -> Dropout 0.5 ->
Linear 1024 -> BatchNorm1d -> ReLU -> Linear) on the backbone's features, with no
bottleneck: set the model's ``head_hidden``/``head_dropout``/``head_norm``
(:class:`~da_framework.models.classifier.DeepHead`) and the same values here, e.g.
``mcd(head_hidden=(1024, 1024))`` (the trainer refuses a mismatch).  A deep F2 runs once per
sub-step on the joint source+target features, as tllib's ``F2(G(cat(x_s, x_t)))``, so its
BatchNorm normalises over both domains and one dropout mask serves the source CE and the
target discrepancy (returned as the metric ``discrepancy``).  F2's BatchNorm always uses the
batch's statistics and keeps no running statistics: F2 is used only in training (evaluation
reports F1, the model's head).

Known differences from tllib's digits MCD (``mcd.py``/``mcd.sh`` at commit 09d0eb81, heads
from ``tllib/alignment/mcd.py``): tllib adds ``0.03 * (H(F1) + H(F2))`` in steps A and B,
H = -mean_k log(mean_i p_ik + 1e-6) over the target batch (``--trade-off-entropy``), which no
term here computes; it trains G with SGD without momentum and F1, F2 with SGD momentum 0.9
(both weight decay 5e-4, constant learning rate), here one optimiser serves all; it keeps
running statistics for F2 and reports the best epoch's ``max(acc(F1), acc(F2))``, here only
F1 is evaluated; torch's uniform initialisation (flax: LeCun normal).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.errors import UserError
from da_framework.losses.checks import check_feature_pair, compute_dtype
from da_framework.losses.mdd import AdversarialHead
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss
from da_framework.models.classifier import DeepHead, check_head

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


def check_second_head(head_hidden: Any, head_dropout: float, head_norm: str) -> tuple[int, ...]:
    """The ``mcd`` term's head settings validated (one-line :class:`LossError`); returns the widths."""
    try:
        return check_head(head_hidden, head_dropout, head_norm)
    except UserError as e:
        raise LossError(f"mcd: {e}") from None


def deep_second_classifier_logits(
    params: Any, features: jax.Array, num_classes: int, hidden: tuple[int, ...], dropout: float, norm: str,
    key: jax.Array,
) -> jax.Array:
    """A deep F2's training-mode logits (n, k) on ``features`` (n, d): dropout masks from ``key``,
    BatchNorm over these n rows (batch statistics; nothing is stored)."""
    head = DeepHead(num_classes, hidden, dropout, norm)
    logits, _ = head.apply({"params": params}, features, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
    return logits


@register_stateful_loss(
    "mcd",
    description="maximum classifier discrepancy: two heads, three-step schedule (custom step; here F2's source CE)",
    reference="Saito et al., 'Maximum Classifier Discrepancy for Unsupervised Domain Adaptation', CVPR 2018",
    trainer="mcd",
)
def mcd_term(
    num_k: int = 4,
    discrepancy_weight: float = 1.0,
    head_hidden: tuple[int, ...] = (),
    head_dropout: float = 0.5,
    head_norm: str = "batch",
) -> StatefulTerm:
    """F2 (its parameters are the term's) and, as a term, F2's source cross-entropy (step A).

    ``num_k`` and ``discrepancy_weight`` are read by the MCD trainer (:mod:`da_framework.methods.mcd`).
    ``head_hidden``, ``head_dropout``, ``head_norm``: F2's architecture, which must be the
    model head's (F1); ``()`` is a single Dense layer (:data:`SecondClassifier`), otherwise a
    :class:`~da_framework.models.classifier.DeepHead` run on the joint features (module docstring).
    """
    del num_k, discrepancy_weight
    hidden = check_second_head(head_hidden, head_dropout, head_norm)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        if hidden:
            head = DeepHead(inputs.source_logits.shape[-1], hidden, head_dropout, head_norm)
            return TermState(params=head.init(key, inputs.source_features, train=False)["params"])
        example = (inputs.source_features, inputs.source_logits)
        return TermState(params=SecondClassifier().init(key, example)["params"])

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        if not hidden:
            logits2 = second_classifier_logits(term_state.params, inputs.source_features, inputs.source_logits)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits2.astype(jnp.float32), inputs.source_labels)
            return jnp.mean(ce), term_state.state, {}
        n_s, k = inputs.source_logits.shape
        joint = jnp.concatenate([inputs.source_features, inputs.target_features])
        logits2 = deep_second_classifier_logits(term_state.params, joint, k, hidden, head_dropout, head_norm, inputs.key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits2[:n_s].astype(jnp.float32), inputs.source_labels)
        disc = classifier_discrepancy(inputs.target_logits, logits2[n_s:])
        return jnp.mean(ce), term_state.state, {"discrepancy": disc}

    return StatefulTerm(init, apply)
