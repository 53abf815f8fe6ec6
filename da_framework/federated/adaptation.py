"""Federated transfer learning and federated domain adaptation.

* **Federated transfer (fine-tuning):** :func:`pretrain_on_source` trains the model
  centrally on a labelled source domain (the usual ``source_only`` run of
  :func:`da_framework.train.train`); its parameters then initialise the federated
  rounds on the target clients (``pretrain_steps`` in :class:`FedConfig`).
* **Federated domain adaptation:** labelled source clients and unlabelled target clients
  train one global model together.  Every client minimises, on its *own* batch only,

      [labelled] masked cross-entropy + sum_j w_j * loss_j(own batch)

  where the ``loss_j`` come from the loss registry (:func:`adaptation_method`), e.g.
  ``"0.1*entropy"`` (entropy minimisation, Grandvalet & Bengio 2004).  The term's
  :class:`~da_framework.losses.registry.LossInputs` carry the client's batch as both its
  ``source_*`` and ``target_*`` fields, so no raw data, feature or label ever crosses a
  client: only parameter updates reach the server (this is the FedAvg + local-regulariser
  family of federated DA; cross-client discrepancy losses such as MMD between a source
  client and a target client would need shared features and are out of scope).
"""

from __future__ import annotations

from typing import Any

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError, get_loss
from da_framework.train.method import Method, parse_method


def adaptation_method(spec: str | None) -> Method | None:
    """Parses the per-client adaptation terms (a method spec without ``cross_entropy``).

    Raises:
      LossError: for a term with an auxiliary network (a discriminator would have to be
        federated too: not supported) or for ``cross_entropy`` (the engine already adds the
        masked supervised loss on labelled clients).
    """
    if spec is None or not spec.strip():
        return None
    method = parse_method(spec)
    for term in method.terms:
        if term.loss == "cross_entropy":
            raise LossError(
                "the adaptation spec must not contain cross_entropy: labelled clients always add the masked "
                "supervised loss; write only the extra terms, e.g. '0.1*entropy'"
            )
        if get_loss(term.loss).stateful:
            raise LossError(
                f"loss {term.loss!r} keeps state across steps (a discriminator, a teacher), which the federated "
                "engine does not keep; use a loss of the client's own batch (e.g. entropy)"
            )
    return method


def pretrain_on_source(config: ExperimentConfig, steps: int) -> Any:
    """Centrally trains ``config.model`` on ``config.source`` (``source_only``) for ``steps``
    steps and returns the classifier parameters (the federated starting point)."""
    from da_framework.train.loop import train

    result = train(config.replace(method="source_only", steps=steps, num_devices=1))
    return result.state.params["model"]
