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


def init_train_state(
    key: jax.Array,
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    source_inputs: jax.Array,
    target_inputs: jax.Array,
    source_labels: jax.Array,
    pretrained: Any = None,
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
