"""The RSC training step: mute the features most responsible for the true class, then train on the rest.

Huang, Wang, Xing & Huang, "Self-Challenging Improves Cross-Domain Generalization", ECCV 2020,
Eqs. (1)-(5) and Sec. 3.3 (batch percentage), in DomainBed's form (facebookresearch/DomainBed,
``domainbed/algorithms.py`` at commit 22002ea, class ``RSC``).  On the whole source batch
(the environments pooled, one forward pass), with f the features (``Classifier.features``:
the bottleneck output, or the backbone's without one), h the head, o the one-hot labels:

    G      = d sum(h(f) * o) / d f                              (Eq. 1; per example and feature)
    m_f    = [G < percentile_row(G, 100 (1 - rsc_f_drop_factor))]  (Eq. 2; per example)
    c      = softmax(h(f))_y - softmax(h(f * m_f))_y               (the true-class confidence drop)
    m_b    = [c < percentile(c, 100 (1 - rsc_b_drop_factor))]      (Sec. 3.3; over the batch)
    mask   = m_f OR m_b                                          (muted only where m_b is false)
    loss   = CE(h(f * mask), y)                                  (Eq. 5)
    theta <- the run's optimiser step on grad loss.

The masks are constants (no gradient flows through G, the percentiles or the comparisons),
as in DomainBed; the loss's gradient reaches the head and, through f, everything below it.
Percentiles are linear interpolation (NumPy's default, which DomainBed calls), and the
comparisons strict, so the examples with the largest confidence drops (a share of about
``rsc_b_drop_factor``) get their ``rsc_f_drop_factor`` share of top-gradient features muted.
The reported loss is DomainBed's: the cross-entropy of the masked logits.

Differences from DomainBed: the term's weight and schedule multiply the loss (DomainBed has
neither: weight 1, constant schedule, the same update).  DomainBed's optimiser is
Adam(lr, weight_decay); here it is the run's optimiser, the same under DomainBed's protocol
(``optimizer=adam``, constant rate, weight decay 0).  The three forward passes of the head are
one pass of the features below it, as in DomainBed.  Unlike this project's other DG
trainers, RSC never splits the batch by environment, so it also runs with one source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.classification import cross_entropy
from da_framework.losses.dg_trainers import batch_accuracy, checked_number, step_scale, trainer_term
from da_framework.losses.registry import LossError
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.schedules import get_schedule
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, TrainStep


def _head(module: Classifier, features: jax.Array) -> jax.Array:
    return module.head(features)


def rsc_mask(
    head: Any, features: jax.Array, labels: jax.Array, f_drop_factor: float, b_drop_factor: float
) -> jax.Array:
    """RSC's 0/1 feature mask (Eqs. 1-3 and the batch percentage), a constant of the same shape as ``features``.

    Args:
      head: ``head(features) -> logits``.
      features: (n, d) the batch's features.
      labels: (n,) integer labels.
      f_drop_factor: the share of each example's features to mute, in [0, 1].
      b_drop_factor: the share of examples whose features are muted, in [0, 1].
    """
    features = jax.lax.stop_gradient(features)
    logits = head(features)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    g = jax.grad(lambda f: jnp.sum(head(f) * onehot))(features)
    mask_f = g < jnp.percentile(g, (1.0 - f_drop_factor) * 100.0, axis=1, keepdims=True)

    def true_class(z: jax.Array) -> jax.Array:
        return jnp.sum(jax.nn.softmax(z, axis=-1) * onehot, axis=1)

    changes = true_class(logits) - true_class(head(features * mask_f))
    mask_b = changes < jnp.percentile(changes, (1.0 - b_drop_factor) * 100.0)
    return jax.lax.stop_gradient(jnp.logical_or(mask_f, mask_b[:, None]).astype(features.dtype))


def make_rsc_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds RSC's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the
    method is the ``rsc`` term alone (``rsc_f_drop_factor`` and ``rsc_b_drop_factor`` in
    [0, 1]; its weight and schedule multiply the loss), ``model`` a
    :class:`~da_framework.models.classifier.Classifier` (features, then a head), the source
    batch any number of environments (pooled) and the target batch is not read.  Metrics:
    ``loss`` (the weighted masked cross-entropy, also ``loss/<key>``),
    ``loss/<key>/muted_fraction`` (the share of feature entries muted),
    ``source_train_accuracy`` (of the unmasked logits), ``grad_norm``.
    """
    del num_targets
    # RSC pools the environments, so one is enough: only the method and dtype checks apply.
    term, hp = trainer_term(method, "rsc", max(num_sources, 2), compute_dtype)
    if not isinstance(model, Classifier):
        raise LossError(f"rsc: needs a Classifier (features, then a linear head), got {type(model).__name__}")
    f_drop = checked_number(hp["rsc_f_drop_factor"], "rsc", "rsc_f_drop_factor", lambda v: 0 <= v <= 1,
                            "a number in [0, 1]")
    b_drop = checked_number(hp["rsc_b_drop_factor"], "rsc", "rsc_b_drop_factor", lambda v: 0 <= v <= 1,
                            "a number in [0, 1]")
    schedule = get_schedule(term.schedule)

    def loss_fn(
        params: Any, model_state: Any, x: jax.Array, y: jax.Array, key: jax.Array, scale: jax.Array
    ) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
        mutable = list(model_state)
        variables = {"params": params["model"], **model_state}
        out = model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=mutable if mutable else False,
                          method="features")
        features, new_state = out if mutable else (out, model_state)

        def head(f: jax.Array) -> jax.Array:
            return model.apply({"params": params["model"]}, f, method=_head)

        mask = rsc_mask(head, features, y, f_drop, b_drop)
        logits = head(features)
        loss = scale * cross_entropy(head(features * mask), y)
        return loss, (dict(new_state) if mutable else model_state, logits, mask)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        del target_batch
        x, y = source_batch[input_key], source_batch["label"]
        scale = step_scale(state.step, total_steps, term, schedule)
        (loss, (model_state, logits, mask)), grads = grad_fn(state.params, state.model_state, x, y, key, scale)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "source_train_accuracy": batch_accuracy(logits, y),
            "grad_norm": optax.global_norm(grads),
            f"loss/{term.key}": loss,
            f"loss/{term.key}/muted_fraction": 1.0 - jnp.mean(mask),
        }
        return new_state, metrics

    return step
