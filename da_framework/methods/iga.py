"""The IGA training step: mean risk plus the spread of the environments' gradients, differentiated to second order.

Koyama & Yamaguchi, "Out-of-distribution generalization with maximal invariant predictor" /
"When is invariance useful in an Out-of-Distribution Generalization problem?" (arXiv:2008.01883,
2020; DomainBed cites v2), Inter-environmental Gradient Alignment, in DomainBed's form
(facebookresearch/DomainBed, ``domainbed/algorithms.py`` at commit 22002ea, class ``IGA``).
With L_e the cross-entropy of environment e's batch (its own forward pass), g_e = grad L_e
and g_bar = mean_e g_e, summed over every parameter tensor:

    objective = mean_e L_e + penalty * sum_e ||g_e - stop_gradient(g_bar)||^2
    theta <- the run's optimiser step on grad objective     (jax.grad through jax.grad).

The penalty's gradient is 2 penalty sum_e H_e (g_e - g_bar), H_e the Hessian of L_e.
DomainBed's g_bar comes from a second ``autograd.grad`` without ``create_graph``, so it is a
constant, as the ``stop_gradient`` here; differentiating it too would add
-2 penalty H_bar sum_e (g_e - g_bar) = 0, so both give the same update.  The reported ``loss``
is DomainBed's: the mean environment loss; the penalty (``penalty_value``) is
``loss/<key>/penalty``.

Differences from DomainBed: the term's weight and schedule multiply the whole objective
(DomainBed has neither: weight 1, constant schedule, the same update).  DomainBed's optimiser
is Adam(lr, weight_decay); here it is the run's optimiser, the same under DomainBed's protocol
(``optimizer=adam``, constant rate, weight decay 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.dg_trainers import (
    batch_accuracy,
    checked_number,
    environment_batches,
    make_environment_loss,
    step_scale,
    trainer_term,
)
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.schedules import get_schedule
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, TrainStep


def gradient_spread(env_grads: list[Any]) -> jax.Array:
    """``sum_e ||g_e - stop_gradient(mean_e g_e)||^2`` over all leaves of the K gradient trees ``env_grads``."""
    mean = jax.lax.stop_gradient(jax.tree.map(lambda *gs: jnp.mean(jnp.stack(gs), axis=0), *env_grads))
    return sum(
        sum(jnp.sum((g - m) ** 2) for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mean)))
        for grads in env_grads
    )


def make_iga_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds IGA's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the
    method is the ``iga`` term alone (``penalty`` >= 0; its weight and schedule multiply the
    objective), the source batch holds ``num_sources`` >= 2 environments and the target
    batch is not read.  Metrics: ``loss`` (the weighted mean environment loss, also
    ``loss/<key>``), ``loss/<key>/penalty`` (the gradient spread, unweighted),
    ``loss/<key>/objective`` (the weighted objective), ``source_train_accuracy``,
    ``grad_norm`` (of the objective's gradient).
    """
    del num_targets
    term, hp = trainer_term(method, "iga", num_sources, compute_dtype)
    penalty = checked_number(hp["penalty"], "iga", "penalty", lambda v: 0 <= v < float("inf"),
                             "a finite number >= 0")
    schedule = get_schedule(term.schedule)
    env_grad = jax.value_and_grad(make_environment_loss(model), has_aux=True)

    def objective(params: Any, model_state: Any, xs: jax.Array, ys: jax.Array, key: jax.Array) -> tuple[jax.Array, Any]:
        losses, grads, accuracies = [], [], []
        for e in range(num_sources):
            (loss, (model_state, logits)), g = env_grad(params, model_state, xs[e], ys[e],
                                                        jax.random.fold_in(key, e), jnp.float32(1.0))
            losses.append(loss)
            grads.append(g)
            accuracies.append(batch_accuracy(logits, ys[e]))
        mean_loss, spread = jnp.mean(jnp.stack(losses)), gradient_spread(grads)
        return mean_loss + penalty * spread, (mean_loss, spread, model_state, jnp.mean(jnp.stack(accuracies)))

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        del target_batch
        xs, ys = environment_batches(source_batch, input_key, num_sources)
        scale = step_scale(state.step, total_steps, term, schedule)
        (total, (mean_loss, spread, model_state, accuracy)), grads = grad_fn(
            state.params, state.model_state, xs, ys, key)
        grads = jax.tree.map(lambda g: scale * g, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
        )
        metrics = {
            "loss": scale * mean_loss,
            "source_train_accuracy": accuracy,
            "grad_norm": optax.global_norm(grads),
            f"loss/{term.key}": scale * mean_loss,
            f"loss/{term.key}/penalty": spread,
            f"loss/{term.key}/objective": scale * total,
        }
        return new_state, metrics

    return step
