"""SagNet's style head and feature randomisation: the ``sagnet`` term of the ``sagnet`` trainer.

Nam, Lee, Park, Yoon & Yoo, "Reducing Domain Gap by Reducing Style Bias", CVPR 2021
(arXiv:1910.11645, "Style-Agnostic Networks"), Algorithm 1, in DomainBed's form:
facebookresearch/DomainBed ``domainbed/algorithms.py`` class ``SagNet`` (read at commit
22002ea), with ``hparams_registry.py``'s ``sag_w_adv`` (default 0.1, search ``10**U(-2, 1)``).

DomainBed's SagNet splits the network into a featurizer F (here: the model's backbone and
bottleneck), a content classifier C (the model's ``head``, so the model's own forward
``C(F(x))`` is DomainBed's ``predict``) and a style classifier S, one linear layer on the
features like C (DomainBed's ``networks.Classifier`` with ``nonlinear_classifier=False``).
S is this term's ``TermState.params``: ``{"kernel": (d, k), "bias": (k,)}``.  The trainer
(:mod:`da_framework.methods.sagnet`) runs the three updates.

:func:`randomize` is DomainBed's ``randomize``.  On 4-D maps DomainBed takes per-channel
statistics over the spatial positions (instance statistics); the features here are flat
(N, d) vectors (``MNIST_CNN`` mean-pools to 128), and on a 2-D tensor DomainBed's code takes
``mean`` and ``var`` over the last axis, i.e. one scalar mean and one scalar (unbiased,
``d - 1``) variance per example across its d features -- not a size-1 axis, so it is not the
identity.  That is the variant implemented here, for (N, d) features only:

    mu_i = mean_j f_ij,  s2_i = sum_j (f_ij - mu_i)^2 / (d - 1),  n_i = (f_i - mu_i) / sqrt(s2_i + eps)
    "style"  : out_i = n_i * sqrt(a s2_i + (1 - a) s2_p(i) + eps) + a mu_i + (1 - a) mu_p(i)
    "content": out_i = stop_gradient(n_p(i)) * sqrt(s2_i + eps) + mu_i

with ``a ~ U(0, 1)`` per example, ``p`` a random permutation of the batch, ``eps`` 1e-5.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.losses.classification import cross_entropy
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

TRAINER = "sagnet"
EPS = 1e-5


def check_sag_w_adv(value: Any) -> float:
    """``sag_w_adv`` as a float when it is a finite number >= 0 (not a bool), else a one-line LossError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LossError(f"sagnet: sag_w_adv must be a finite number >= 0, got {value!r}")
    return float(value)


def randomization_draws(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One ``randomize`` call's draws: ``(alpha (n, 1) ~ U(0, 1), permutation (n,), dropout key)``.

    The trainer calls this once per sub-step with that sub-step's key (DomainBed draws
    ``torch.rand(N, 1)`` and ``torch.randperm(N)`` in every ``randomize``).
    """
    k_alpha, k_perm, k_model = jax.random.split(key, 3)
    return jax.random.uniform(k_alpha, (n, 1)), jax.random.permutation(k_perm, n), k_model


def randomize(x: jax.Array, what: str, alpha: jax.Array, perm: jax.Array, eps: float = EPS) -> jax.Array:
    """DomainBed's ``SagNet.randomize`` on flat features ``x`` (N, d) (module doc for the formulas).

    Args:
      x: (N, d) features, d >= 2.
      what: ``"style"`` (mix each example's mean and variance with a permuted example's, by
        ``alpha``) or ``"content"`` (give each example a permuted example's normalised,
        gradient-stopped content under its own mean and variance).
      alpha: (N, 1) mixing weights (read for ``"style"`` only).
      perm: (N,) permutation of the batch.
      eps: added to the variance.

    Raises:
      LossError: for features that are not (N, d) with d >= 2, or an unknown ``what``.
    """
    if x.ndim != 2 or x.shape[1] < 2:
        raise LossError(f"sagnet: randomize needs (batch, d) features with d >= 2, got shape {tuple(x.shape)}")
    if what not in ("style", "content"):
        raise LossError(f"sagnet: randomize what must be 'style' or 'content', got {what!r}")
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True, ddof=1)
    normed = (x - mean) / jnp.sqrt(var + eps)
    if what == "style":
        mean = alpha * mean + (1 - alpha) * mean[perm]
        var = alpha * var + (1 - alpha) * var[perm]
    else:
        normed = jax.lax.stop_gradient(normed[perm])
    return normed * jnp.sqrt(var + eps) + mean


def style_logits(style_params: Any, features: jax.Array) -> jax.Array:
    """The style classifier S (one Dense layer, this term's params) on (N, d) features."""
    return features @ style_params["kernel"] + style_params["bias"]


def adversarial_loss(style_logits_: jax.Array) -> jax.Array:
    """DomainBed's ``loss_adv`` before its weight: minus the mean over examples and classes of log-softmax."""
    return -jnp.mean(jax.nn.log_softmax(style_logits_, axis=-1))


@register_stateful_loss(
    "sagnet",
    description="SagNet: content head on style-randomised features, adversarial style head (DomainBed; own trainer)",
    reference="Nam, Lee, Park, Yoon & Yoo, 'Reducing Domain Gap by Reducing Style Bias', CVPR 2021 (arXiv:1910.11645)",
    trainer=TRAINER,
)
def sagnet(sag_w_adv: float = 0.1) -> StatefulTerm:
    """The style classifier S as term parameters; ``sag_w_adv`` weighs the featurizer's adversarial step.

    ``apply`` is the content path's cross-entropy on the step's (un-randomised) source logits,
    the number a standard evaluation of the method's loss would read; the ``sagnet`` trainer
    computes DomainBed's three losses itself and does not call it.
    """
    check_sag_w_adv(sag_w_adv)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        feats = inputs.source_features
        if feats.ndim != 2:
            raise LossError(f"sagnet: needs (batch, d) features, got shape {tuple(feats.shape)}")
        params = nn.Dense(inputs.source_logits.shape[-1]).init(key, feats[:1])["params"]
        return TermState(params={"kernel": params["kernel"], "bias": params["bias"]})

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        del term_state
        return cross_entropy(inputs.source_logits, inputs.source_labels), (), {}

    return StatefulTerm(init, apply)
