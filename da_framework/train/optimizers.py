"""The optimiser factory: one place that turns a name, a learning rate and a schedule into optax.

Every trainer in the project builds its optimiser here -- :func:`da_framework.train.train` and
the vmapped-seeds runner through :func:`make_optimizer` (from an :class:`ExperimentConfig`),
the detector through :func:`build_optimizer` -- so a schedule or a weight-decay convention
means the same thing everywhere.

Learning-rate schedules (``count`` is the optimiser's step count, ``steps`` the run's length):

* ``"constant"``;
* ``"cosine"``: ``optax.cosine_decay_schedule(lr, steps)``;
* ``"inv"``: DANN's ``lr * (1 + 10 count / steps)^-0.75`` (Ganin et al. 2016);
* ``"inv:<gamma>"``: tllib's ``lr * (1 + gamma count)^-0.75`` (its ``--lr-gamma``);
* ``"warmup_cosine"``: linear warm-up from 0 over ``steps // 20`` steps, then cosine decay.

Optimisers: ``"sgd"`` (Nesterov momentum 0.9 by default, 0 for plain SGD; weight decay added to the gradient, as tllib),
``"adam"`` (no weight decay), ``"adamw"`` (decoupled weight decay).  ``grad_clip > 0`` clips
the global gradient norm first.  ``lr_multipliers`` scales the final update of parameter
groups (:func:`scale_by_path`): for these optimisers that is the same as giving the group the
learning rate ``lr * scale``, as PyTorch parameter groups do (tllib's backbone at 0.1x).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import optax

from da_framework.errors import UserError

if TYPE_CHECKING:
    from da_framework.config import ExperimentConfig

OPTIMIZERS = ("sgd", "adam", "adamw")


class OptimizerError(UserError):
    """Raised for an unknown optimiser or learning-rate schedule."""


def learning_rate_schedule(learning_rate: float, schedule: str, steps: int) -> optax.ScalarOrSchedule:
    """The learning rate as a constant or an optax schedule (names in the module docstring)."""
    from da_framework.config import inv_gamma

    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, steps)
    if schedule == "inv":  # DANN: lr / (1 + 10 p)^0.75
        return lambda count: learning_rate * (1.0 + 10.0 * count / steps) ** -0.75
    if schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(steps // 20, 1), max(steps, 2))
    if (gamma := inv_gamma(schedule)) is not None:  # tllib: lr / (1 + gamma * step)^0.75
        return lambda count: learning_rate * (1.0 + gamma * count) ** -0.75
    raise OptimizerError(
        f"unknown learning-rate schedule {schedule!r}; valid: constant, cosine, inv, inv:<gamma>, warmup_cosine"
    )


def scale_by_path(multipliers: Mapping[str, float]) -> optax.GradientTransformation:
    """Multiplies each update leaf by the scale of the first regex (``re.search`` on its
    ``/``-joined path, e.g. ``model/backbone/Conv_0/kernel``) that matches it; 1 if none does.

    ``init`` raises :class:`OptimizerError` for a regex that matches no parameter (a typo
    would otherwise silently train everything at the base rate).
    """
    from da_framework.transfer.weights import path_string  # the project's one key-path spelling

    try:
        rules = [(re.compile(k), float(v)) for k, v in multipliers.items()]
    except re.error as e:
        raise OptimizerError(f"lr_multipliers: bad regex: {e}") from None

    def scale(path: tuple[Any, ...]) -> float:
        name = path_string(path)
        return next((v for pat, v in rules if pat.search(name)), 1.0)

    def init_fn(params: Any) -> optax.EmptyState:
        paths = [path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        for pat, _ in rules:
            if not any(pat.search(p) for p in paths):
                raise OptimizerError(
                    f"lr_multipliers regex {pat.pattern!r} matches no parameter; paths look like: {', '.join(paths[:4])}, ..."
                )
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        def apply(path: tuple[Any, ...], u: Any) -> Any:  # trace time only: one regex pass per leaf
            factor = scale(path)
            return u if factor == 1.0 else u * factor

        return jax.tree_util.tree_map_with_path(apply, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def build_optimizer(
    name: str,
    learning_rate: float,
    *,
    schedule: str = "constant",
    steps: int = 1,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
    lr_multipliers: Mapping[str, float] | None = None,
    momentum: float = 0.9,
    inject_learning_rate: bool = False,
) -> optax.GradientTransformation:
    """The optimiser ``name`` with its learning-rate schedule, weight decay and clipping.

    Args:
      name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
      learning_rate: the base learning rate.
      schedule: a schedule name (module docstring).
      steps: the run's length, for schedules that need it.
      weight_decay: L2 coefficient (added to the gradient for SGD, decoupled for AdamW,
        ignored by Adam).
      grad_clip: clip the global gradient norm to this value first (0: no clipping).
      lr_multipliers: ``{regex: scale}`` per-group learning-rate factors (:func:`scale_by_path`).
      momentum: SGD's (Nesterov) momentum; 0 is plain SGD (FedAvg's clients, tllib's AFN).
      inject_learning_rate: keep the learning rate in the optimiser state
        (``optax.inject_hyperparams``), where a reset can set it
        (:func:`da_framework.train.step.reset_optimizer`); needs ``schedule="constant"``.
    """
    if not 0 <= momentum < 1:
        raise OptimizerError(f"momentum must be in [0, 1), got {momentum}")
    if name not in OPTIMIZERS:
        raise OptimizerError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if inject_learning_rate and schedule != "constant":
        raise OptimizerError(f"a term switches the learning rate at its reset (DomainBed's EQRM eqrm_lr), which needs "
                             f"lr_schedule='constant', got {schedule!r}")

    def base(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
        if name == "sgd" and momentum:
            return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum, nesterov=True))
        if name == "sgd":
            return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate))
        if name == "adamw":
            return optax.adamw(learning_rate, weight_decay=weight_decay)
        return optax.adam(learning_rate)

    lr = learning_rate_schedule(learning_rate, schedule, steps)
    opt = optax.inject_hyperparams(base)(learning_rate=lr) if inject_learning_rate else base(lr)
    if grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
    if lr_multipliers:
        opt = optax.chain(opt, scale_by_path(lr_multipliers))
    return opt


def make_optimizer(config: ExperimentConfig, inject_learning_rate: bool = False) -> optax.GradientTransformation:
    """The optimiser named by an experiment config (``optimizer``, ``learning_rate``, ``lr_schedule``, ...);
    ``inject_learning_rate`` as :func:`build_optimizer`'s."""
    return build_optimizer(
        config.optimizer,
        config.learning_rate,
        schedule=config.lr_schedule,
        steps=config.steps,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        lr_multipliers=config.lr_multipliers,
        momentum=config.momentum,
        inject_learning_rate=inject_learning_rate,
    )
