"""Adaptation losses: pure functions of arrays, and the registry that names them."""

from da_framework.losses.adversarial import (
    DomainDiscriminator,
    dann_ramp,
    domain_adversarial_loss,
    gradient_reversal,
)
from da_framework.losses.classification import cross_entropy
from da_framework.losses.mmd import mk_mmd
from da_framework.losses.registry import (
    LossError,
    LossInputs,
    LossSpec,
    StatefulTerm,
    TermState,
    get_loss,
    loss_specs,
    register_loss,
    register_stateful_loss,
)

__all__ = [
    "DomainDiscriminator",
    "LossError",
    "LossInputs",
    "LossSpec",
    "StatefulTerm",
    "TermState",
    "cross_entropy",
    "dann_ramp",
    "domain_adversarial_loss",
    "get_loss",
    "gradient_reversal",
    "loss_specs",
    "mk_mmd",
    "register_loss",
    "register_stateful_loss",
]
