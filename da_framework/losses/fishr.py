"""Fishr: matching the environments' variances of the classifier's per-example gradients.

Rame, Dancette & Cord, "Fishr: Invariant Gradient Variances for Out-of-Distribution
Generalization", ICML 2022.  The variant is DomainBed's (facebookresearch/DomainBed,
``domainbed/algorithms.py``, class ``Fishr``, with ``MovingAverage`` and ``l2_between_dicts``
of ``domainbed/lib/misc.py``; read at commit 22002ea):

1. per-example gradients of the cross-entropy of each example with respect to the final
   linear classifier's weights and bias (DomainBed: BackPACK's ``BatchGrad`` on the summed,
   unreduced loss, with ``create_graph=True``);
2. for each training environment e, their centred (population) variance ``v_e``, one value
   per classifier weight and bias entry;
3. an exponential moving average per environment across steps, DomainBed's ``MovingAverage``
   with ``oneminusema_correction=True``: the stored average is
   ``m_e <- ema * m_e + (1 - ema) * v_e`` (``m_e = 0`` before the first step, stored without
   gradient), and the penalty reads ``(ema * m_e_old + (1 - ema) * v_e) / (1 - ema)``.  That
   correction divides by ``1 - ema`` (so the gradient reaching ``v_e`` has weight 1 whatever
   ``ema``); it is not Adam's ``1 - ema**t`` bias correction, and the first step's value is
   exactly ``v_e``;
4. penalty = ``mean_e mean_j (v_e[j] - mean_e' v_e'[j])**2`` over the concatenated weight and
   bias entries j (``l2_between_dicts`` is a mean, then ``/ num_domains``);
5. weight ``fishr_lambda`` from step ``fishr_penalty_anneal_iters`` on and 0 before
   (:func:`~da_framework.losses.dg_common.anneal_weight`; the EMA moves at every step from
   the first), and DomainBed's fresh Adam at that step (``optimizer_reset``; DomainBed skips
   the reset when the anneal step is 0, as :func:`~da_framework.train.step.reset_fires` does).

The per-example gradients are computed in closed form: for logits ``z_i = f_i @ W + b`` and
``g_i = softmax(z_i) - onehot(y_i)``, the gradient of example i's cross-entropy is
``f_i g_i^T`` for W and ``g_i`` for b.  That holds because da_framework's
:class:`~da_framework.models.classifier.Classifier` computes its logits as ``head(features)``
with one Dense ``head``: the step's ``features`` are exactly what the final linear layer
reads (``tests/test_fishr.py`` checks the closed form against ``jax.vmap(jax.grad(...))``
with respect to the head, and the penalty's gradient against the autodiff version).  When
the step passes the model parameters, the term checks that a ``head`` Dense of shape
(feature width, classes) is there, so a model whose logits are not one Dense of the features
(``fusion="logits"``, multi-task heads) is refused with a one-line error.

Hyper-parameters are DomainBed's ``lambda``, ``penalty_anneal_iters`` and ``ema`` with a
``fishr_`` prefix (``lambda`` is a Python keyword); defaults 1000, 1500 and 0.95 (the same in
every dataset branch of ``hparams_registry.py``), search space ``10**U(1, 4)``,
``int(U(0, 5000))`` and ``U(0.90, 0.99)``.  ``steps_of`` counts the anneal step as the other
DG terms do (:mod:`~da_framework.losses.dg_common`).

Known differences: DomainBed's penalty uses all parameters of its (linear, by default)
classifier; with ``nonlinear_classifier=True`` DomainBed would take every layer of its MLP
classifier, which has no counterpart here (only the final Dense ``head``).  DomainBed's
variance is over the torch layout ``(classes, features)``; the mean over entries is the same.

Method: ``"cross_entropy + fishr"`` (DomainBed's ``all_nll`` is the cross-entropy over the
pooled, equally sized environment batches); the term includes its weight, so leave its
method weight at 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from da_framework.losses.dg_common import DOMAINBED_STEPS, anneal_weight, labelled_views
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss


def per_example_head_grads(features: jax.Array, logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Closed-form per-example gradients of the cross-entropy w.r.t. a final Dense layer.

    Args:
      features: (n, d) inputs of the Dense layer.
      logits: (n, k) its outputs, ``features @ kernel + bias``.
      labels: (n,) integer labels.

    Returns:
      ``(dkernel, dbias)`` of shapes (n, d, k) and (n, k): ``f_i g_i^T`` and ``g_i`` with
      ``g_i = softmax(z_i) - onehot(y_i)``, the gradients of each example's own loss.
    """
    g = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) - jax.nn.one_hot(labels, logits.shape[1], dtype=jnp.float32)
    return features.astype(jnp.float32)[:, :, None] * g[:, None, :], g


def gradient_variance(features: jax.Array, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """(d k + k,) centred variance over one environment's examples of the per-example head gradients.

    The kernel's (d, k) entries come first, flattened row-major, then the k bias entries;
    the variance is the population one, ``mean_i (g_i - mean g)^2`` (DomainBed's).
    """
    dkernel, dbias = per_example_head_grads(features, logits, labels)
    flat = jnp.concatenate([dkernel.reshape(dkernel.shape[0], -1), dbias], axis=1)
    centred = flat - jnp.mean(flat, axis=0, keepdims=True)
    return jnp.mean(centred**2, axis=0)


def moving_average(stored: jax.Array, current: jax.Array, ema: float) -> tuple[jax.Array, jax.Array]:
    """DomainBed's ``MovingAverage.update`` with ``oneminusema_correction=True``.

    Args:
      stored: the stored average (zeros before the first step).
      current: this step's value (differentiated through).
      ema: the decay, in [0, 1).

    Returns:
      ``(value, new_stored)``: ``(ema * stored + (1 - ema) * current) / (1 - ema)``, what the
      penalty reads, and the new stored average ``ema * stored + (1 - ema) * current``
      without gradient.
    """
    new = ema * jax.lax.stop_gradient(stored) + (1.0 - ema) * current
    return new / (1.0 - ema), jax.lax.stop_gradient(new)


def fishr_penalty(variances: jax.Array) -> jax.Array:
    """``mean_e mean_j (v[e, j] - mean_e' v[e', j])^2`` of a (K, P) stack of per-environment variances."""
    return jnp.mean((variances - jnp.mean(variances, axis=0, keepdims=True)) ** 2)


def _check_head(params: Any, width: int, classes: int) -> None:
    """Refuses model parameters whose logits are not one Dense ``head`` of the features."""
    if not isinstance(params, Mapping):
        return
    head = params.get("head")
    kernel = head.get("kernel") if isinstance(head, Mapping) else None
    if kernel is None or tuple(kernel.shape) != (width, classes) or "bias" not in head:
        raise LossError(
            f"fishr: needs a model whose logits are one Dense 'head' of the features, kernel ({width}, {classes}) "
            f"and a bias; got {'no head' if kernel is None else f'head kernel {tuple(kernel.shape)}'} (use model "
            "families built on Classifier, not fusion='logits' or multi-task heads)"
        )


def _views(inputs: LossInputs) -> tuple:
    views = labelled_views(inputs, "fishr", min_examples=2)
    if len(views) < 2:
        raise LossError(f"fishr needs at least 2 training environments (source='env_a,env_b,...'), got {len(views)}")
    return views


@register_stateful_loss(
    "fishr",
    description="Fishr: match the environments' EMA variances of per-example classifier gradients (DomainBed's Fishr)",
    reference="Rame, Dancette & Cord, 'Fishr: Invariant Gradient Variances for Out-of-Distribution Generalization', "
    "ICML 2022; DomainBed's Fishr",
    optimizer_reset="fishr_penalty_anneal_iters",  # DomainBed re-creates its Adam at that step
)
def fishr_term(
    fishr_lambda: float = 1000.0,
    fishr_penalty_anneal_iters: float = 1500,
    fishr_ema: float = 0.95,
    steps_of: float = DOMAINBED_STEPS,
) -> StatefulTerm:
    """DomainBed's Fishr penalty with its anneal (module doc); the state is the (K, d k + k) stored EMAs."""
    for name, value in (("fishr_lambda", fishr_lambda), ("fishr_penalty_anneal_iters", fishr_penalty_anneal_iters)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LossError(f"fishr: {name} must be a finite number >= 0, got {value!r}")
    if isinstance(fishr_ema, bool) or not isinstance(fishr_ema, (int, float)) or not 0.0 <= fishr_ema < 1.0:
        raise LossError(f"fishr: fishr_ema must be in [0, 1), got {fishr_ema!r}")
    if isinstance(steps_of, bool) or not isinstance(steps_of, (int, float)) or not steps_of > 0:
        raise LossError(f"fishr: steps_of must be > 0, got {steps_of!r}")
    ema = float(fishr_ema)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        del key
        views = _views(inputs)
        d, k = views[0].features.shape[1], views[0].logits.shape[1]
        return TermState(state=jnp.zeros((len(views), d * k + k), jnp.float32))

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        views = _views(inputs)
        d, k = views[0].features.shape[1], views[0].logits.shape[1]
        _check_head(inputs.params, d, k)
        if term_state.state.shape != (len(views), d * k + k):
            raise LossError(f"fishr: state of shape {term_state.state.shape} does not fit {len(views)} environments "
                            f"and a ({d}, {k}) head; re-initialise the term")
        variances = jnp.stack([gradient_variance(v.features, v.logits, v.labels) for v in views])
        averaged, stored = moving_average(term_state.state, variances, ema)
        penalty = fishr_penalty(averaged)
        weight = anneal_weight(inputs.progress, fishr_lambda, fishr_penalty_anneal_iters, 0.0, steps_of)
        return weight * penalty, stored, {"penalty": penalty}

    return StatefulTerm(init, apply)
