"""The ARM trainer: one optimiser step on the pooled source cross-entropy, the source batch forwarded alone.

ARM-CML (Zhang et al., NeurIPS 2021) as DomainBed's ``ARM`` trains it; the term, the reasons for a
trainer of its own and the differences are in :mod:`da_framework.losses.arm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.arm import TRAINER, arm_support_size
from da_framework.losses.classification import cross_entropy
from da_framework.losses.dg_trainers import make_environment_loss
from da_framework.losses.registry import LossError


def make_arm_step(
    model: Any,
    method: Any,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> Any:
    """Builds ARM's step ``(state, source_batch, target_batch, key) -> (state, metrics)``: one optimiser
    step on the ``arm`` term's cross-entropy (times its weight and schedule) from a training-mode forward
    of the source batch alone.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the target batch
    is not read.  Metrics: ``loss``, ``loss/<key>``, ``source_train_accuracy``, ``grad_norm``.

    Raises:
      LossError: for a method other than ``arm`` alone, a non-ARM model, a compute dtype other
        than float32, or (when the step is traced) a per-environment batch other than ``support_size``.
    """
    from da_framework.train.schedules import get_schedule

    del num_targets
    if [t.loss for t in method.terms] != [TRAINER]:
        raise LossError(f"arm is a whole objective (the pooled cross-entropy): write the method as 'arm' alone, "
                        f"got {method.name!r}")
    if compute_dtype != "float32":
        raise LossError(f"arm: its step runs in float32 only, got compute_dtype={compute_dtype!r}")
    support = arm_support_size(model)
    term = method.terms[0]
    schedule = get_schedule(term.schedule)

    loss_fn = make_environment_loss(model)  # scale * CE of one training-mode forward

    def step(state: Any, source_batch: Mapping[str, jax.Array], target_batch: Mapping[str, jax.Array],
             key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        del target_batch
        x, y = source_batch[input_key], source_batch["label"]
        if x.shape[0] % num_sources or x.shape[0] // num_sources != support:
            per_env = x.shape[0] // max(num_sources, 1)
            raise LossError(f"arm: each environment's batch must be one support group: batch_size {per_env} != "
                            f"model_kwargs support_size {support}; set them equal")
        progress = jnp.minimum(state.step.astype(jnp.float32) / total_steps, 1.0)
        scale = term.weight * schedule(progress)
        (total, (model_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, x, y, key, scale)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  model_state=model_state, opt_state=opt_state)
        metrics = {"loss": total, f"loss/{term.key}": cross_entropy(logits, y), "grad_norm": optax.global_norm(grads),
                   "source_train_accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
        return new_state, metrics

    return step
