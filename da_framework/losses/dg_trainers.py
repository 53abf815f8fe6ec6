"""The terms of DomainBed's gradient-level DG algorithms (MLDG, Fish, ANDMask) and what their steps share.

These algorithms change the update, not the loss, so each is a trainer
(:mod:`da_framework.methods.mldg`, :mod:`~da_framework.methods.fish`,
:mod:`~da_framework.methods.andmask`), chosen by its term: ``register_loss(..., trainer="mldg")``.
The term is the whole objective, ``--method mldg``, like ``group_dro`` and ``mixup``.  As a
loss it is DomainBed's ERM objective, the mean over the step's environments of their
cross-entropy.  Its keyword arguments are the algorithm's hyper-parameters (DomainBed's names
and defaults, ``domainbed/hparams_registry.py`` at commit 22002ea), read by the trainer.

The trainers run the model once per environment, on that environment's batch alone, as
DomainBed's ``update`` does (one ``F.cross_entropy`` per minibatch).  The target batch is
never used, as in DomainBed's domain generalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from da_framework.losses.classification import cross_entropy
from da_framework.losses.dg_common import environment_risks, labelled_views
from da_framework.losses.registry import LossError, LossInputs, get_loss, register_loss

EnvLoss = Callable[..., tuple[jax.Array, tuple[Any, jax.Array]]]


def mean_environment_risk(inputs: LossInputs, loss: str) -> jax.Array:
    """DomainBed's ERM objective over the step's labelled environments: the mean of their cross-entropies."""
    return jnp.mean(environment_risks(labelled_views(inputs, loss)))


@register_loss(
    "mldg",
    description="MLDG, first-order meta-learning over environment pairs (DomainBed; its own trainer)",
    reference="Li, Yang, Song & Hospedales, 'Learning to Generalize: Meta-Learning for Domain Generalization', AAAI 2018",
    trainer="mldg",
)
def mldg_term(inputs: LossInputs, mldg_beta: float = 1.0, n_meta_test: int = 0) -> jax.Array:
    """Mean environment cross-entropy; ``mldg_beta`` weighs the meta-test gradient.

    ``n_meta_test=0`` pairs environments as DomainBed's code before its issue #94 (2022), so
    as its 2020 published tables: ``(perm[k], perm[k + 1 mod K])`` for every k.
    ``n_meta_test=m >= 1`` is DomainBed's code since issue #94 (default there 2): the last m
    environments of a random permutation are the meta-test ones, cycled over the other K - m.
    """
    del mldg_beta, n_meta_test
    return mean_environment_risk(inputs, "mldg")


@register_loss(
    "fish",
    description="Fish, gradient matching by inner steps over environments and a meta step (DomainBed; its own trainer)",
    reference="Shi et al., 'Gradient Matching for Domain Generalization', ICLR 2022",
    trainer="fish",
)
def fish_term(inputs: LossInputs, meta_lr: float = 0.5) -> jax.Array:
    """Mean environment cross-entropy; ``meta_lr`` is the step towards the inner model."""
    del meta_lr
    return mean_environment_risk(inputs, "fish")


@register_loss(
    "andmask",
    description="AND-mask: keep gradient entries whose sign all environments agree on (DomainBed; its own trainer)",
    reference="Parascandolo et al., 'Learning explanations that are hard to vary', ICLR 2021",
    trainer="andmask",
)
def andmask_term(inputs: LossInputs, tau: float = 1.0) -> jax.Array:
    """Mean environment cross-entropy; ``tau`` is the sign-agreement threshold in [0, 1]."""
    del tau
    return mean_environment_risk(inputs, "andmask")


def trainer_term(method: Any, name: str, num_sources: int, compute_dtype: str) -> tuple[Any, dict[str, Any]]:
    """The checks every one of these trainers makes when it is built, and its term.

    Args:
      method: the run's :class:`~da_framework.train.method.Method`.
      name: the algorithm's loss name (``"mldg"``, ``"fish"``, ``"andmask"``).
      num_sources: the run's training environments.
      compute_dtype: the run's compute dtype.

    Returns:
      ``(term, hparams)``: the method's only term and its hyper-parameters over the defaults.

    Raises:
      LossError: when the method is not the term alone, for fewer than two training
        environments, or a compute dtype other than float32.
    """
    if [t.loss for t in method.terms] != [name]:
        raise LossError(
            f"{name} is a whole objective (each environment's cross-entropy): write the method as {name!r} alone, "
            f"got {method.name!r}"
        )
    term = method.terms[0]
    hparams = {**get_loss(name).hparams, **dict(term.hparams)}
    if num_sources < 2:
        raise LossError(
            f"{name}: needs at least 2 training environments, got {num_sources}; list them as source='a,b,...'"
        )
    if compute_dtype != "float32":
        raise LossError(f"{name}: its step runs in float32 only, got compute_dtype={compute_dtype!r}")
    return term, hparams


def environment_batches(
    source_batch: Mapping[str, jax.Array], input_key: str, num_sources: int
) -> tuple[jax.Array, jax.Array]:
    """The source batch (the environments' batches concatenated, equal sizes) as ``(K, b, ...)`` inputs and ``(K, b)`` labels."""
    x, y = source_batch[input_key], source_batch["label"]
    if x.shape[0] % num_sources:
        raise LossError(f"a source batch of {x.shape[0]} examples does not split into {num_sources} equal environments")
    b = x.shape[0] // num_sources
    return x.reshape(num_sources, b, *x.shape[1:]), y.reshape(num_sources, b)


def make_environment_loss(model: Any) -> EnvLoss:
    """``env_loss(params, model_state, x, y, key, scale) -> (scale * CE, (model_state, logits))``.

    One training-mode forward pass of ``model`` on one environment's batch ``x`` at
    ``params["model"]`` (``params`` is the train state's ``{"model", "aux"}`` tree), dropout
    from ``key``; the returned model state holds the pass's normalisation statistics.
    """

    def env_loss(
        params: Any, model_state: Any, x: jax.Array, y: jax.Array, key: jax.Array, scale: jax.Array
    ) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        mutable = list(model_state)
        variables = {"params": params["model"], **model_state}
        out = model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=mutable if mutable else False)
        (logits, _), new_state = out if mutable else (out, model_state)
        new_state = dict(new_state) if mutable else model_state
        return scale * cross_entropy(logits, y), (new_state, logits)

    return env_loss


def batch_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The fraction of ``labels`` that ``argmax(logits)`` gets right."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def step_scale(step: jax.Array, total_steps: int, term: Any, schedule: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """The trainer term's weight times its schedule at the step's progress ``min(step / total_steps, 1)``."""
    return term.weight * schedule(jnp.minimum(step.astype(jnp.float32) / total_steps, 1.0))


def checked_number(value: Any, loss: str, name: str, ok: Callable[[float], bool], valid: str) -> float:
    """``value`` as a float if it is a number (not a bool) with ``ok(value)``, else a one-line LossError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise LossError(f"{loss}: {name} must be {valid}, got {value!r}")
    return float(value)
