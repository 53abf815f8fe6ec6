"""The train state: a plain pytree of arrays, so a step is a pure function of it."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from da_framework.losses.registry import LossInputs
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
      step: number of steps taken (int32 scalar).
      params: ``{"model": classifier params, "aux": {term key: the term's trainable
        TermState.params}}`` (a discriminator, a second head), all optimised.
      model_state: the model's non-trainable collections (e.g. ``{"batch_stats": ...}``).
      opt_state: the optax optimiser state over ``params``.
      term_states: ``{term key: the term's TermState.state}``, what stateful terms keep
        across steps without optimising it (L2-SP's anchor, mean teacher's EMA teacher).
    """

    step: jax.Array
    params: dict[str, Any]
    model_state: dict[str, Any]
    opt_state: optax.OptState
    term_states: dict[str, Any]


def _views(feats: jax.Array, logits: jax.Array, joint: jax.Array, labels: jax.Array, n_s: int,
           num_sources: int, num_targets: int) -> tuple[Any, ...]:
    """The step's per-domain views (:func:`da_framework.train.step.domain_views`), or () for one pair."""
    if num_sources == 1 and num_targets == 1:
        return ()
    from da_framework.train.step import domain_views  # lazy: step imports this module

    return domain_views(feats, logits, joint, labels, n_s, num_sources, num_targets)


def init_train_state(
    key: jax.Array,
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    source_inputs: jax.Array,
    target_inputs: jax.Array,
    source_labels: jax.Array,
    pretrained: Any = None,
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainState:
    """Initialises model, auxiliary networks and optimiser from example batches.

    Args:
      key: PRNG key of the initialisation.
      model: the classifier.
      method: the method (its stateful terms are initialised here).
      tx: the optimiser.
      source_inputs, target_inputs: example batches (shapes as in training).
      source_labels: example source labels.
      pretrained: ``{"params/backbone/Conv_0/kernel": array, ...}``, leaves replacing the
        initial model variables before anything reads them (so an L2-SP anchor or a mean
        teacher starts from them too); see :mod:`da_framework.transfer.pretrained`.
      num_sources, num_targets: domains in the source / target batch, as the step sees them,
        so that a term's ``init`` gets the same per-domain views (e.g. GroupDRO's K weights).
    """
    k_model, k_aux, k_loss = jax.random.split(key, 3)
    joint = jnp.concatenate([source_inputs, target_inputs])
    variables = model.init(k_model, joint, train=False)
    if pretrained:
        from da_framework.transfer.pretrained import merge_variables

        variables = merge_variables(variables, pretrained)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    logits, feats = model.apply(variables, joint, train=False)
    n_s = source_inputs.shape[0]

    def apply_model(p: Any, x: jax.Array, train: bool = True) -> tuple[jax.Array, jax.Array]:
        del train
        return model.apply({"params": p, **model_state}, x, train=False)

    inputs = LossInputs(
        source_features=feats[:n_s],
        target_features=feats[n_s:],
        source_logits=logits[:n_s],
        target_logits=logits[n_s:],
        source_labels=source_labels,
        progress=jnp.zeros((), jnp.float32),
        key=k_loss,
        source_inputs=source_inputs,
        target_inputs=target_inputs,
        params=params,
        apply_model=apply_model,
        domains=_views(feats, logits, joint, source_labels, n_s, num_sources, num_targets),
    )
    term_params, term_states = method.init(k_aux, inputs)
    all_params = {"model": params, "aux": term_params}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=all_params,
        model_state=model_state,
        opt_state=tx.init(all_params),
        term_states=term_states,
    )
