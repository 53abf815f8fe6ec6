"""Trainers: how one training step updates the state, chosen by name (config key ``trainer``).

Most methods train by one gradient step on their weighted sum of loss terms, the
``"standard"`` trainer (:func:`da_framework.train.step.make_train_step`).  A method whose update
is not that (MCD's three sub-steps) names its own, listed here in one explicit dict, as
scenic's ``train_lib/trainers.py`` does::

    TRAINERS = {"standard": make_train_step, "mcd": make_mcd_step}

A loss term that only works with one trainer says so when registered
(``register_loss(..., trainer="mcd")``).  With ``trainer="auto"`` (the default) a run uses the
trainer its terms ask for, else ``"standard"``; naming a trainer explicitly that the terms
contradict is an error, never a silent switch.  Every trainer has ``make_train_step``'s
signature and returns ``step(state, source_batch, target_batch, key) -> (state, metrics)``.
"""

from __future__ import annotations

import functools

from da_framework.losses.registry import LossError, get_loss
from da_framework.methods.adda import make_adda_step
from da_framework.methods.andmask import make_andmask_step
from da_framework.methods.arm import make_arm_step
from da_framework.methods.dann_alternating import make_dann_alt_step
from da_framework.methods.fish import make_fish_step
from da_framework.methods.iga import make_iga_step
from da_framework.methods.mcd import make_mcd_step
from da_framework.methods.mldg import make_mldg_step
from da_framework.methods.rsc import make_rsc_step
from da_framework.methods.sagnet import make_sagnet_step
from da_framework.methods.sandmask import make_sandmask_step
from da_framework.methods.shot import make_shot_step
from da_framework.train.method import Method
from da_framework.train.step import StepBuilder, make_train_step

TRAINERS: dict[str, StepBuilder] = {
    "standard": make_train_step,
    "mcd": make_mcd_step,
    "mldg": make_mldg_step,
    "fish": make_fish_step,
    "andmask": make_andmask_step,
    "sandmask": make_sandmask_step,
    "iga": make_iga_step,
    "rsc": make_rsc_step,
    "adda": make_adda_step,
    "dann_alt": make_dann_alt_step,
    "sagnet": make_sagnet_step,
    "arm": make_arm_step,
    "shot": make_shot_step,
}
# Trainers whose step never forwards the target batch (the DG trainers: DomainBed trains on its
# training environments only), so ``forward_target=False`` changes nothing for them.
TARGET_FREE_TRAINERS = frozenset({"mldg", "fish", "andmask", "sandmask", "iga", "rsc", "dann_alt", "sagnet", "arm"})


def resolve_trainer(name: str, method: Method) -> str:
    """The trainer a run of ``method`` uses when its config says ``trainer=name``.

    Raises:
      LossError: for an unknown trainer, terms asking for two different trainers, or an
        explicit trainer other than the one a term needs.
    """
    if name != "auto" and name not in TRAINERS:
        raise LossError(f"unknown trainer {name!r}; valid: auto, {', '.join(TRAINERS)}")
    declared = {t.key: get_loss(t.loss).trainer for t in method.terms}
    wanted = {key: trainer for key, trainer in declared.items() if trainer}
    needed = set(wanted.values())
    if len(needed) > 1:
        raise LossError(f"method {method.name!r} combines terms needing different trainers: {wanted}; use one of them")
    if name == "auto":
        return needed.pop() if needed else "standard"
    if needed and name not in needed:
        term, trainer = next(iter(wanted.items()))
        raise LossError(
            f"term {term!r} of method {method.name!r} needs trainer {trainer!r}, but the config says trainer={name!r}; "
            f"set trainer={trainer} or auto"
        )
    return name


def get_trainer(name: str, method: Method, forward_target: bool = True) -> StepBuilder:
    """The step builder of :func:`resolve_trainer` ``(name, method)``; with ``forward_target=False``
    (config key), the standard step forwarding the source batch alone.

    Raises:
      LossError: as :func:`resolve_trainer`, or ``forward_target=False`` with a trainer whose step
        reads the target batch (MCD, ADDA, SHOT).
    """
    resolved = resolve_trainer(name, method)
    if forward_target or resolved in TARGET_FREE_TRAINERS:
        return TRAINERS[resolved]
    if resolved == "standard":
        return functools.partial(make_train_step, forward_target=False)
    raise LossError(f"trainer {resolved!r} of method {method.name!r} trains on the target batch, so forward_target=False "
                    "cannot apply; set forward_target=True")
