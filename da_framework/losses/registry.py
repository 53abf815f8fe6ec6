"""The loss registry: how a loss becomes usable by name in configs and on the CLI.

A *loss* is a pure function of arrays (e.g. :func:`da_framework.losses.mmd.mk_mmd`).  A
*registered loss term* adapts it to the arrays of one training step, bundled in
:class:`LossInputs`, and returns a scalar.  Registering one is a decorator::

    @register_loss("coral", description="Deep CORAL", reference="Sun & Saenko, ECCV-W 2016")
    def coral_term(inputs: LossInputs) -> jax.Array:
        return coral(inputs.source_features, inputs.target_features)

Keyword arguments of the term function (after ``inputs``) are its hyper-parameters; a
method spec sets them (``"cross_entropy + 0.5*coral"``; see :mod:`da_framework.train.method`).

A step may hold more than two domains (several labelled sources, several unlabelled
targets, as in multi-source adaptation and domain generalisation): ``inputs.source_*`` and
``inputs.target_*`` are then the concatenations of all labelled and of all unlabelled
domains (so two-domain terms pool them), and :meth:`LossInputs.sources` /
:meth:`LossInputs.targets` give one :class:`DomainView` per domain::

    @register_loss("pairwise_coral", description="...", reference="...")
    def pairwise_coral(inputs: LossInputs) -> jax.Array:
        views = inputs.sources()
        return sum(coral(a.features, b.features) for a, b in itertools.combinations(views, 2))

A term that keeps something across steps -- a domain discriminator's parameters, an EMA
teacher, anchor weights, group weights -- is a :class:`StatefulTerm`, the ``(init, apply)``
pair of optax's ``GradientTransformation`` style with a NamedTuple :class:`TermState`.  Its
factory's keyword arguments are the hyper-parameters::

    @register_stateful_loss("moving_mean_gap", description="...", reference="...")
    def moving_mean_gap(momentum: float = 0.9) -> StatefulTerm:
        def init(key, inputs):
            return TermState(state=jnp.zeros(inputs.target_features.shape[1]))

        def apply(term_state, inputs):
            mean = momentum * term_state.state + (1 - momentum) * inputs.target_features.mean(0)
            mean = jax.lax.stop_gradient(mean)
            return jnp.sum((inputs.source_features.mean(0) - mean) ** 2), mean, {}

        return StatefulTerm(init, apply)

``TermState.params`` are trained with the model (the trainer differentiates the total loss
with respect to them and the optimiser updates them); ``TermState.state`` is replaced by
what ``apply`` returns, and after the optimiser step by what the optional ``update`` returns
(an EMA of the new model parameters).  See ``docs/writing_a_loss.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax

from da_framework.errors import UserError


@dataclasses.dataclass(frozen=True)
class DomainView:
    """One domain's part of a training step.

    Attributes:
      domain_id: the domain's index in the step: labelled sources 0..K-1 in config order,
        then unlabelled targets K..K+M-1.
      labelled: True for a source (its labels are given), False for a target.
      features: (n, d) adaptation features of this domain's examples.
      logits: (n, k) classifier logits.
      labels: (n,) integer labels of a source domain; None for a target.
      inputs: the raw model inputs, or None where the step does not pass them.
    """

    domain_id: int
    labelled: bool
    features: jax.Array
    logits: jax.Array
    labels: jax.Array | None = None
    inputs: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """The arrays of one training step that a loss term may read.

    Attributes:
      source_features: (n_s, d) adaptation features of the source batch.
      target_features: (n_t, d) adaptation features of the target batch.
      source_logits: (n_s, k) classifier logits of the source batch.
      target_logits: (n_t, k) classifier logits of the target batch.
      source_labels: (n_s,) integer labels of the source batch (target labels are never
        given to the training step).
      progress: scalar in [0, 1], the fraction of training done (for schedules).
      key: a PRNG key private to this term and step.
      source_inputs, target_inputs: the raw model inputs of the batch (for terms that
        re-run the model, e.g. on augmented views).
      params: the classifier's current parameters.
      term_states: every stateful term's ``TermState.state`` at the start of the step, by
        term key (read-only: a term may read another's, e.g. ``kd_teacher`` an EMA teacher).
      apply_model: ``apply_model(params, x, train=True) -> (logits, features)`` with the
        current normalisation state; state updates are discarded.  Each call in a step
        draws its own dropout key, so two views get independent dropout masks (a call
        inside a ``lax`` loop body is traced once and so reuses one key).
      domains: one :class:`DomainView` per domain of the step when it has more than one
        source or target (the ``source_*``/``target_*`` fields are then their
        concatenations, in domain order); empty for a two-domain step.  Read it through
        :meth:`sources` and :meth:`targets`, which also work for two-domain steps.
      target_forwarded: False when the step ran the model on the source batch alone (config
        ``forward_target=False``): the ``target_*`` fields are then None.
    """

    source_features: jax.Array
    target_features: jax.Array
    source_logits: jax.Array
    target_logits: jax.Array
    source_labels: jax.Array
    progress: jax.Array
    key: jax.Array
    source_inputs: jax.Array | None = None
    target_inputs: jax.Array | None = None
    params: Any = None
    term_states: Mapping[str, Any] | None = None
    apply_model: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    domains: tuple[DomainView, ...] = ()
    target_forwarded: bool = True

    def sources(self) -> tuple[DomainView, ...]:
        """The labelled domains of the step, one view each (one for a two-domain step)."""
        if self.domains:
            return tuple(d for d in self.domains if d.labelled)
        return (DomainView(0, True, self.source_features, self.source_logits, self.source_labels, self.source_inputs),)

    def targets(self) -> tuple[DomainView, ...]:
        """The unlabelled domains of the step, one view each (one for a two-domain step).

        Raises:
          LossError: when the step did not forward the target batch (``forward_target=False``).
        """
        if not self.target_forwarded:
            raise LossError("this term reads the target domains, which forward_target=False does not forward; "
                            "set forward_target=True")
        if self.domains:
            return tuple(d for d in self.domains if not d.labelled)
        return (DomainView(1, False, self.target_features, self.target_logits, None, self.target_inputs),)


LossFn = Callable[..., jax.Array]


class TermState(NamedTuple):
    """What a stateful term keeps between steps.

    Attributes:
      params: trainable parameters (a discriminator, a second head), optimised with the model.
      state: everything else (an EMA teacher, anchor weights, running statistics), replaced
        by the value ``apply`` (and ``update``) return; never differentiated.
    """

    params: Any = ()
    state: Any = ()


class InitFn(Protocol):
    """``init(key, inputs) -> TermState`` from example step inputs (shapes as in training)."""

    def __call__(self, key: jax.Array, inputs: LossInputs) -> TermState: ...


class ApplyFn(Protocol):
    """``apply(term_state, inputs) -> (loss, new_state, metrics)``; ``new_state`` replaces ``term_state.state``."""

    def __call__(
        self, term_state: TermState, inputs: LossInputs
    ) -> tuple[jax.Array, Any, Mapping[str, jax.Array]]: ...


class UpdateFn(Protocol):
    """``update(state, new_model_params, progress) -> state``, run after each optimiser step."""

    def __call__(self, state: Any, model_params: Any, progress: jax.Array) -> Any: ...


class StatefulTerm(NamedTuple):
    """A loss term with explicit state: pure ``init`` and ``apply`` (and an optional ``update``).

    Attributes:
      init: creates the term's :class:`TermState`.
      apply: the term's loss on one step, its new ``state`` and extra metrics (logged as
        ``loss/<key>/<name>``).
      update: moves ``state`` after the optimiser step from the new model parameters, or None.
    """

    init: InitFn
    apply: ApplyFn
    update: UpdateFn | None = None


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss term.

    Attributes:
      name: registry name.
      fn: ``fn(inputs: LossInputs, **hparams) -> scalar``, or for a stateful term the
        factory ``fn(**hparams) -> StatefulTerm``.
      description: one line for ``da list``.
      reference: the paper (authors, venue, year).
      hparams: default hyper-parameters, read from ``fn``'s keyword defaults.
      stateful: True when ``fn`` is a :class:`StatefulTerm` factory.
      trainer: the trainer (:mod:`da_framework.train.trainers`) this term needs, or None
        for any.
      optimizer_reset: the hyper-parameter naming the step (counted in the term's
        ``steps_of``, as :func:`~da_framework.losses.dg_common.anneal_weight` counts) at which
        the standard step re-initialises the optimiser state, as DomainBed re-creates its Adam
        when a penalty's weight jumps; None for no reset.
      lr_after_reset: the hyper-parameter holding the learning rate the optimiser takes from
        that reset on (DomainBed's EQRM re-creates its Adam with ``eqrm_lr``); None keeps the
        run's rate.  The run's ``lr_schedule`` must then be ``"constant"`` (DomainBed's).
    """

    name: str
    fn: Callable[..., Any]
    description: str
    reference: str
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    stateful: bool = False
    trainer: str | None = None
    optimizer_reset: str | None = None
    lr_after_reset: str | None = None

    def term(self, **hparams: Any) -> StatefulTerm:
        """The :class:`StatefulTerm` of a stateful loss with ``hparams`` over its defaults."""
        if not self.stateful:
            raise LossError(f"loss {self.name!r} is a plain function of the step's inputs, not a stateful term")
        return self.fn(**{**self.hparams, **hparams})


class LossError(UserError):
    """Raised for an unknown loss, a bad hyper-parameter or invalid loss inputs."""


_LOSSES: dict[str, LossSpec] = {}


def _register(
    name: str, description: str, reference: str, trainer: str | None, overwrite: bool, stateful: bool,
    optimizer_reset: str | None = None, lr_after_reset: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if not name.isidentifier():
        raise LossError(f"loss name {name!r} must be an identifier (letters, digits, '_')")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _LOSSES and not overwrite:
            raise LossError(f"loss {name!r} is already registered; pass overwrite=True to replace it")
        params = list(inspect.signature(fn).parameters.values())[0 if stateful else 1 :]
        missing = [p.name for p in params if p.default is inspect.Parameter.empty]
        if stateful and missing:
            raise LossError(f"stateful loss {name!r}: every factory argument needs a default, not {missing}")
        hparams = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        if optimizer_reset is not None and optimizer_reset not in hparams:
            raise LossError(f"loss {name!r}: optimizer_reset names {optimizer_reset!r}, which is not one of its hyper-parameters")
        if lr_after_reset is not None and (optimizer_reset is None or lr_after_reset not in hparams):
            raise LossError(f"loss {name!r}: lr_after_reset names {lr_after_reset!r}, which must be one of its "
                            "hyper-parameters, with optimizer_reset set")
        _LOSSES[name] = LossSpec(name, fn, description, reference, hparams, stateful, trainer, optimizer_reset,
                                 lr_after_reset)
        return fn

    return decorator


def register_loss(
    name: str,
    *,
    description: str,
    reference: str,
    trainer: str | None = None,
    overwrite: bool = False,
    optimizer_reset: str | None = None,
    lr_after_reset: str | None = None,
) -> Callable[[LossFn], LossFn]:
    """Decorator registering ``fn(inputs: LossInputs, **hparams) -> scalar`` as ``name``.

    Args:
      name: the name used in method specs (letters, digits and ``_``).
      description: one line shown by ``da list``.
      reference: the paper the loss comes from.
      trainer: the trainer the term needs (e.g. ``"mcd"``), or None for any.
      overwrite: allow replacing an existing registration (e.g. when re-running a notebook).
      optimizer_reset: the hyper-parameter whose step re-initialises the optimiser state
        (:attr:`LossSpec.optimizer_reset`), or None.
      lr_after_reset: the hyper-parameter of the learning rate from that reset on
        (:attr:`LossSpec.lr_after_reset`), or None.

    Returns:
      the decorator, which returns ``fn`` unchanged.
    """
    return _register(name, description, reference, trainer, overwrite, stateful=False, optimizer_reset=optimizer_reset,
                     lr_after_reset=lr_after_reset)


def register_stateful_loss(
    name: str,
    *,
    description: str,
    reference: str,
    trainer: str | None = None,
    overwrite: bool = False,
    optimizer_reset: str | None = None,
) -> Callable[[Callable[..., StatefulTerm]], Callable[..., StatefulTerm]]:
    """Decorator registering a factory ``fn(**hparams) -> StatefulTerm`` as the loss ``name``.

    The factory's keyword arguments (each with a default) are the term's hyper-parameters,
    set from a method spec like a plain loss's: ``mean_teacher(decay=0.999)``.  Arguments as
    for :func:`register_loss`.
    """
    return _register(name, description, reference, trainer, overwrite, stateful=True, optimizer_reset=optimizer_reset)


def get_loss(name: str) -> LossSpec:
    """Returns the registered loss ``name``; the error lists valid names."""
    _load_builtin_losses()
    if name not in _LOSSES:
        raise LossError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[name]


def loss_specs() -> list[LossSpec]:
    """All registered losses, sorted by name."""
    _load_builtin_losses()
    return [_LOSSES[n] for n in sorted(_LOSSES)]


def _load_builtin_losses() -> None:
    """Imports every module of ``da_framework.losses`` once, running its registrations."""
    import importlib
    import pkgutil

    import da_framework.losses as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"da_framework.losses.{info.name}")
