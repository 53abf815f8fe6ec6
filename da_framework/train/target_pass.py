"""Train steps that also read the whole target train split now and then.

A pure step sees one batch.  A few methods also need a statistic of the *whole* unlabelled
target set: SHOT (Liang et al., ICML 2020) re-labels every target example by clustering the
features of all of them once per epoch, then trains on those pseudo-labels batch by batch.
Such a trainer returns a :class:`TargetPassStep`: the usual compiled ``step`` plus three
host-side hooks that :func:`da_framework.train.loop.train` calls, in this order:

* ``prepare(state, num_examples)`` once, before the first step (and before a checkpoint is
  restored): sizes the per-example state (a table of ``num_examples`` pseudo-labels), so the
  step compiles once with its final shapes;
* ``due(step, num_examples, batch_size)`` before every step: whether to refresh now;
* ``refresh(state, outputs)`` when due: ``outputs`` is :func:`target_outputs` -- the model's
  eval-mode logits and features of every target train example, in split order, and their
  labels, which a refresh may only *report* (a diagnostic such as the pseudo-labels'
  accuracy), never train on.

The target batches then carry ``"index"``, each example's position in the split
(:data:`da_framework.data.domain.INDEX`), so the step can look its row up.  The per-example
state lives in the train state's ``term_states``: it is checkpointed, so a resumed run continues
with the table the killed run had.  Not supported (each raises a one-line error): several
target domains, and the vmapped-seeds runner.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from da_framework.train.evaluate import predict_split
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics


class TargetPassStep(abc.ABC):
    """A train step with hooks over the whole target train split (module doc)."""

    @abc.abstractmethod
    def __call__(self, state: TrainState, source_batch: Mapping[str, jax.Array],
                 target_batch: Mapping[str, jax.Array], key: jax.Array) -> tuple[TrainState, Metrics]:
        """The pure, jittable step (same contract as :func:`~da_framework.train.step.make_train_step`'s)."""

    @abc.abstractmethod
    def prepare(self, state: TrainState, num_examples: int) -> TrainState:
        """``state`` with its per-example entries sized for ``num_examples`` target examples."""

    @abc.abstractmethod
    def due(self, step: int, num_examples: int, batch_size: int) -> bool:
        """Whether :meth:`refresh` runs before training step ``step`` (0-based)."""

    @abc.abstractmethod
    def refresh(self, state: TrainState, outputs: Mapping[str, np.ndarray]) -> TrainState:
        """``state`` updated from the target split's eval-mode ``outputs`` (:func:`target_outputs`)."""


def target_outputs(model: Any, state: TrainState, split: Any, batch_size: int, input_key: str,
                   predict: Any = None, workers: int = 0, read_threads: int = 4) -> dict[str, np.ndarray]:
    """Eval-mode ``{"logits", "features", "label"}`` of every example of ``split``, in split order.

    Args:
      model: the classifier (returns ``(logits, features)``).
      state: the train state whose model is run.
      split: the target domain's train split.
      batch_size: evaluation batch size.
      input_key: the batch field holding the inputs.
      predict: a jitted ``predict(variables, x)`` to reuse (default: a new one for ``model``).
      workers, read_threads: as in training.
    """
    if predict is None:
        from da_framework.train.evaluate import make_predict_fn

        predict = make_predict_fn(model)
    variables = {"params": state.params["model"], **state.model_state}
    return predict_split(predict, variables, split, batch_size, input_key, workers, read_threads)
