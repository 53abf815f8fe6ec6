"""ARM-CML's objective: the ``arm`` term of the ``arm`` trainer (DomainBed's ``ARM``).

Zhang, Marklund, Dhawan, Gupta, Levine & Finn, "Adaptive Risk Minimization: Learning to Adapt to
Domain Shift", NeurIPS 2021 (arXiv:2007.02931), ARM-CML as facebookresearch/DomainBed
``domainbed/algorithms.py`` class ``ARM`` runs it (commit 22002ea): ``ERM.update`` through ARM's
``predict``, i.e. one Adam step on ``CE(model(all_x), all_y)``, all_x the training environments'
batches concatenated, each environment's batch one support group of the context network.  The
model is :mod:`da_framework.models.arm` (``model="arm"``); this module's term is the objective
(``--method arm``, alone) and :func:`da_framework.methods.arm.make_arm_step` the step (trainer ``"arm"``).

Why a trainer of its own: the standard step forwards the source and the test environment's batch
together, and the context network's BatchNorm would then normalise, and update its running
statistics, over the test environment's examples too.  This step forwards the source batch only,
as DomainBed does, so nothing of the held-out environment reaches the model.  It checks that each
environment's batch is one support group (``support_size == batch_size``, DomainBed's
``support_size = hparams['batch_size']``).

Differences from DomainBed: none in the update (the run's optimiser is DomainBed's Adam in its
protocol); in evaluation see :mod:`da_framework.models.arm` (grouping of a split's last batch).
DomainBed's hparams_registry has no ARM hyper-parameter for SMALL_IMAGES (``batch_size`` is the
common one: default 64, searched ``int(2**U(3, 9))``, which ``support_size`` must follow).
"""

from __future__ import annotations

from typing import Any

import jax

from da_framework.losses.classification import cross_entropy
from da_framework.losses.registry import LossError, LossInputs, register_loss

TRAINER = "arm"


@register_loss(
    "arm",
    description="ARM-CML: ERM through a context network's per-support-group mean channel (DomainBed; model='arm')",
    reference="Zhang, Marklund, Dhawan, Gupta, Levine & Finn, 'Adaptive Risk Minimization: Learning to Adapt to "
    "Domain Shift', NeurIPS 2021 (arXiv:2007.02931)",
    trainer=TRAINER,
)
def arm_term(inputs: LossInputs) -> jax.Array:
    """The cross-entropy of the pooled source batch (DomainBed's ``ERM.update`` objective)."""
    return cross_entropy(inputs.source_logits, inputs.source_labels)


def arm_support_size(model: Any) -> int:
    """The ``support_size`` of an ARM model (``model="arm"``), else a one-line LossError."""
    from da_framework.models.arm import ARMFeaturizer

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ARMFeaturizer) or getattr(model, "bottleneck_dim", None):
        raise LossError("arm: needs the ARM model without a bottleneck: set model='arm', "
                        "model_kwargs={'featurizer': 'mnist_cnn', 'support_size': <batch_size>}, bottleneck_dim=None")
    return int(backbone.support_size)

