"""The Fish training step: inner steps over the environments, then a meta step towards them.

Shi, Seely, Torr, Siddharth, Hannun, Usunier & Synnaeve, "Gradient Matching for Domain
Generalization", ICLR 2022, Algorithm 1, in DomainBed's form (facebookresearch/DomainBed,
``domainbed/algorithms.py`` at commit 22002ea, class ``Fish``).  With theta the parameters
and L_e the cross-entropy of environment e's batch:

    theta~ = theta
    for e = 1..K (the environments in config order):
        theta~ <- one step of the inner optimiser on grad L_e(theta~)
    theta <- theta + meta_lr * (theta~ - theta).

DomainBed re-creates the inner Adam every update but loads the previous update's state into
it (``optimizer_inner_state``), so the inner optimiser's moments and step count persist
across updates, and its outer optimiser is never stepped.  Here the run's optimiser is that
inner optimiser and ``TrainState.opt_state`` is its persistent state: it takes K steps per
training step.  The model's non-trainable state (BatchNorm statistics) moves like the
parameters, ``s + meta_lr (s~ - s)``, as DomainBed's meta step is taken on the whole
``state_dict``.  The reported loss is DomainBed's: the last environment's inner loss.

Differences from DomainBed: the inner optimiser is the run's optimiser (DomainBed: Adam with
the run's lr and weight decay; the same in its protocol); a learning-rate schedule counts
inner steps, K per training step (DomainBed's rate is constant).  The paper's Algorithm 1
visits the environments in a random order; DomainBed, and this step, in their given order.
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


def meta_interpolate(tree: Any, inner: Any, meta_lr: float) -> Any:
    """``tree + meta_lr * (inner - tree)`` on floating leaves (dtype kept); other leaves take ``inner``'s value."""

    def move(a: jax.Array, b: jax.Array) -> jax.Array:
        if not jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating):
            return b
        return (a + meta_lr * (b - a)).astype(a.dtype)

    return jax.tree.map(move, tree, inner)


def make_fish_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds Fish's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the
    method is the ``fish`` term alone (``meta_lr`` in (0, 1]; its weight and schedule scale
    every environment's loss), the source batch holds ``num_sources`` >= 2 environments and
    the target batch is not read.  Metrics: ``loss`` (the last inner loss, as DomainBed),
    ``loss/<key>`` (the mean inner loss), ``source_train_accuracy`` (of the inner passes),
    ``grad_norm`` (the mean norm of the inner gradients).
    """
    del num_targets
    term, hp = trainer_term(method, "fish", num_sources, compute_dtype)
    meta_lr = checked_number(hp["meta_lr"], "fish", "meta_lr", lambda v: 0 < v <= 1, "a number in (0, 1]")
    schedule = get_schedule(term.schedule)
    grad_fn = jax.value_and_grad(make_environment_loss(model), has_aux=True)

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        del target_batch
        xs, ys = environment_batches(source_batch, input_key, num_sources)
        scale = step_scale(state.step, total_steps, term, schedule)
        inner, model_state, opt_state = state.params, state.model_state, state.opt_state
        losses, norms, accuracies = [], [], []
        for e in range(num_sources):
            (loss, (model_state, logits)), grads = grad_fn(inner, model_state, xs[e], ys[e],
                                                           jax.random.fold_in(key, e), scale)
            updates, opt_state = tx.update(grads, opt_state, inner)
            inner = optax.apply_updates(inner, updates)
            losses.append(loss)
            norms.append(optax.global_norm(grads))
            accuracies.append(batch_accuracy(logits, ys[e]))
        new_state = state.replace(
            step=state.step + 1,
            params=meta_interpolate(state.params, inner, meta_lr),
            model_state=meta_interpolate(state.model_state, model_state, meta_lr),
            opt_state=opt_state,
        )
        metrics = {
            "loss": losses[-1],
            "source_train_accuracy": jnp.mean(jnp.stack(accuracies)),
            "grad_norm": jnp.mean(jnp.stack(norms)),
            f"loss/{term.key}": jnp.mean(jnp.stack(losses)),
        }
        return new_state, metrics

    return step
