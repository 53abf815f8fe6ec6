"""The AND-mask training step: keep the gradient entries whose sign the environments agree on.

Parascandolo, Neitz, Orvieto, Gresele & Schölkopf, "Learning explanations that are hard to
vary", ICLR 2021, Sec. 3 (the AND-mask), in DomainBed's form (facebookresearch/DomainBed,
``domainbed/algorithms.py`` at commit 22002ea, class ``ANDMask``, after the authors'
``learning-explanations-hard-to-vary`` code).  With g_e the gradient of environment e's
cross-entropy (its own forward pass) at the current parameters, for every parameter tensor:

    m = [ |mean_e sign(g_e)| >= tau ]                    (elementwise, 0/1)
    g = m * mean_e g_e / (1e-10 + sum(m) / size(m))
    theta <- the run's optimiser step on g.

The rescaling keeps the update's size when only a fraction of the entries survive; a tensor
with no surviving entry gets a zero gradient.  The reported loss is the mean environment
loss.  The update is DomainBed's; its optimiser is Adam, the run's optimiser under DomainBed's
protocol (``optimizer=adam``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def and_mask(grads: jax.Array, tau: float) -> tuple[jax.Array, jax.Array]:
    """DomainBed's ``mask_grads`` for one parameter tensor.

    Args:
      grads: (K, ...) the K environments' gradients of one parameter tensor.
      tau: the agreement threshold in [0, 1].

    Returns:
      ``(masked gradient, mask)``: the gradient (shape ``grads.shape[1:]``) and the 0/1 mask.
    """
    mask = (jnp.abs(jnp.mean(jnp.sign(grads), axis=0)) >= tau).astype(grads.dtype)
    kept = jnp.sum(mask) / mask.size
    return mask * jnp.mean(grads, axis=0) * (1.0 / (1e-10 + kept)), mask


MaskFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def make_masked_gradient_step(
    model: Classifier,
    term: Any,
    mask_fn: MaskFn,
    metric: str,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str,
    num_sources: int,
) -> TrainStep:
    """The step that AND-mask and SAND-mask share: per-environment gradients, masked, one update.

    Each environment's cross-entropy gradient comes from its own forward pass at the current
    parameters; ``mask_fn((K, ...) gradients) -> (masked gradient, mask)`` runs on every
    parameter tensor; the term's weight and schedule multiply the masked gradient and the
    reported loss (the mean environment loss).  ``loss/<key>/<metric>`` is the mean mask value
    over all gradient entries.
    """
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
        params, model_state = state.params, state.model_state
        env_grads, losses, accuracies = [], [], []
        for e in range(num_sources):
            (loss, (model_state, logits)), grads = grad_fn(params, model_state, xs[e], ys[e],
                                                           jax.random.fold_in(key, e), jnp.float32(1.0))
            env_grads.append(grads)
            losses.append(loss)
            accuracies.append(batch_accuracy(logits, ys[e]))
        masked = jax.tree.map(lambda *gs: mask_fn(jnp.stack(gs)), *env_grads)
        grads = jax.tree.map(lambda _, pair: scale * pair[0], params, masked)
        masks = jax.tree.leaves(jax.tree.map(lambda _, pair: pair[1], params, masked))
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(params, updates),
            model_state=model_state,
            opt_state=opt_state,
        )
        size = sum(m.size for m in masks)
        mean_loss = scale * jnp.mean(jnp.stack(losses))
        metrics = {
            "loss": mean_loss,
            "source_train_accuracy": jnp.mean(jnp.stack(accuracies)),
            "grad_norm": optax.global_norm(grads),
            f"loss/{term.key}": mean_loss,
            f"loss/{term.key}/{metric}": sum(jnp.sum(m) for m in masks) / max(size, 1),
        }
        return new_state, metrics

    return step


def make_andmask_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds AND-mask's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the
    method is the ``andmask`` term alone (``tau`` in [0, 1]; its weight and schedule scale
    the masked gradient, the same as scaling every environment's loss since the sign mask
    does not change under a positive scale), the source batch holds ``num_sources`` >= 2
    environments and the target batch is not read.  Metrics: ``loss`` (mean environment loss,
    also ``loss/<key>``), ``loss/<key>/mask_fraction`` (the kept share of all gradient
    entries), ``source_train_accuracy``, ``grad_norm`` (of the masked gradient).
    """
    del num_targets
    term, hp = trainer_term(method, "andmask", num_sources, compute_dtype)
    tau = checked_number(hp["tau"], "andmask", "tau", lambda v: 0 <= v <= 1, "a number in [0, 1]")
    return make_masked_gradient_step(model, term, lambda g: and_mask(g, tau), "mask_fraction", tx, total_steps,
                                     input_key, num_sources)
