"""DANN and CDANN over training environments in DomainBed's alternating form: the terms of the ``dann_alt`` trainer.

Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016 (DANN), and Li et
al., "Deep Domain Generalization via Conditional Invariant Adversarial Networks", ECCV 2018
(CDANN), as DomainBed's code runs them: facebookresearch/DomainBed ``domainbed/algorithms.py``,
classes ``AbstractDANN``, ``DANN`` and ``CDANN`` (read at commit 026d588), with the defaults and
search spaces of ``domainbed/hparams_registry.py`` (read at commit 04cfc61).  The discriminator,
the class embedding and the losses are :mod:`da_framework.losses.dann_envs`' (imported):

    L_d = CE_disc + grad_penalty * mean_i || d(sum_j CE(D(h_j), env_j)) / d h_i ||^2
    h_i = z_i (DANN)  or  z_i + E[y_i] (CDANN);  CE_disc the mean (DANN) or class-balanced (CDANN) CE

where the penalty's CE is the plain (unweighted) sum, as DomainBed's ``reduction='sum'``.
The trainer (:mod:`da_framework.methods.dann_alternating`) alternates DomainBed's two Adam
optimisers: a discriminator step on L_d over D (and E), a generator step on
``CE(classifier) - dann_lambda * L_d`` over the whole classifier (featurizer and head).

Each term owns, as :class:`~da_framework.losses.registry.TermState`:

* ``params``: ``{"discriminator": ..., "class_embedding": ...}`` (CDANN only), the same tree as
  ``dann_envs`` / ``cdann_envs``;
* ``state``: ``{"disc_opt": ..., "gen_opt": ...}``, the optax states of DomainBed's ``disc_opt``
  (over this term's params) and ``gen_opt`` (over the model's params), both
  :func:`domainbed_adam`.  The run's own optimiser (``tx``, config ``optimizer``,
  ``learning_rate``, ``lr_schedule``, ``weight_decay``) is not used: its state rides along in
  the train state unchanged, as DomainBed's DANN never reads its ``lr``.

The term's value, what the generator step adds to the cross-entropy, is ``-dann_lambda * L_d``
(logged ``loss/<key>``); its metrics are ``disc_loss`` (L_d), ``grad_penalty`` (the penalty before
its weight; 0 when ``grad_penalty=0``, which skips computing it) and ``disc_accuracy``.

Differences from DomainBed: ``mlp_dropout`` (default 0) is not implemented; the term weight and
schedule in the method spec scale the generator's adversarial part only (DomainBed has none);
Adam's eps is torch's 1e-8 and weight decay is torch's (L2 added to the gradient).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.dann_envs import (
    EnvironmentDiscriminator,
    class_balance_weights,
    environment_adversarial_loss,
    environment_batch,
)
from da_framework.losses.dg_trainers import checked_number
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

TRAINER = "dann_alt"


class AlternatingHparams(NamedTuple):
    """The checked hyper-parameters of a ``dann_alt`` / ``cdann_alt`` term (DomainBed's names; ``lambda`` is ``dann_lambda``)."""

    dann_lambda: float
    lr_d: float
    lr_g: float
    weight_decay_d: float
    weight_decay_g: float
    beta1: float
    d_steps_per_g_step: int
    grad_penalty: float
    mlp_width: int
    mlp_depth: int


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _whole(value: Any, loss: str, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LossError(f"{loss}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_hparams(loss: str, **hp: Any) -> AlternatingHparams:
    """The term's hyper-parameters checked (one-line LossError naming the first bad one)."""
    positive, at_least_zero = "a finite number > 0", "a finite number >= 0"
    return AlternatingHparams(
        dann_lambda=checked_number(hp["dann_lambda"], loss, "dann_lambda", lambda v: _finite(v) and v > 0, positive),
        lr_d=checked_number(hp["lr_d"], loss, "lr_d", lambda v: _finite(v) and v > 0, positive),
        lr_g=checked_number(hp["lr_g"], loss, "lr_g", lambda v: _finite(v) and v > 0, positive),
        weight_decay_d=checked_number(hp["weight_decay_d"], loss, "weight_decay_d", lambda v: _finite(v) and v >= 0,
                                      at_least_zero),
        weight_decay_g=checked_number(hp["weight_decay_g"], loss, "weight_decay_g", lambda v: _finite(v) and v >= 0,
                                      at_least_zero),
        beta1=checked_number(hp["beta1"], loss, "beta1", lambda v: 0 <= v < 1, "a number in [0, 1)"),
        d_steps_per_g_step=_whole(hp["d_steps_per_g_step"], loss, "d_steps_per_g_step", 1),
        grad_penalty=checked_number(hp["grad_penalty"], loss, "grad_penalty", lambda v: _finite(v) and v >= 0,
                                    at_least_zero),
        mlp_width=_whole(hp["mlp_width"], loss, "mlp_width", 1),
        mlp_depth=_whole(hp["mlp_depth"], loss, "mlp_depth", 2),
    )


def domainbed_adam(learning_rate: float, weight_decay: float, beta1: float) -> optax.GradientTransformation:
    """``torch.optim.Adam(lr, betas=(beta1, 0.9), eps=1e-8, weight_decay)``: L2 added to the gradient, then Adam."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=beta1, b2=0.9, eps=1e-8),
        optax.scale(-learning_rate),
    )


def discriminator_loss(
    params: Any, z: jax.Array, y: jax.Array, env: jax.Array, num_envs: int, num_classes: int, conditional: bool,
    hp: AlternatingHparams,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DomainBed's ``disc_loss`` with its gradient penalty: ``(L_d, penalty, environment logits)`` (module doc)."""
    disc = EnvironmentDiscriminator(num_envs, hp.mlp_width, hp.mlp_depth)
    h = z + params["class_embedding"][y] if conditional else z

    def logits_of(x: jax.Array) -> jax.Array:
        return disc.apply({"params": params["discriminator"]}, x)

    logits = logits_of(h)
    weights = class_balance_weights(y, num_classes) if conditional else None
    loss = environment_adversarial_loss(logits, env, weights)
    penalty = jnp.zeros((), jnp.float32)
    if hp.grad_penalty:  # static: DomainBed's default 0 skips the second-order pass

        def summed_ce(x: jax.Array) -> jax.Array:
            return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_of(x), env))

        input_grad = jax.grad(summed_ce)(h)
        penalty = jnp.mean(jnp.sum(input_grad**2, axis=1))
    return loss + hp.grad_penalty * penalty, penalty, logits


def _make_term(name: str, conditional: bool, **hparams: Any) -> StatefulTerm:
    hp = check_hparams(name, **hparams)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        z, _, _ = environment_batch(inputs, name)
        if inputs.params is None:
            raise LossError(f"{name}: init needs the model's parameters (inputs.params) for the generator's optimiser")
        k_disc, k_emb = jax.random.split(key)
        disc = EnvironmentDiscriminator(len(inputs.sources()), hp.mlp_width, hp.mlp_depth)
        params: dict[str, Any] = {"discriminator": disc.init(k_disc, z)["params"]}
        if conditional:  # torch's nn.Embedding initialises N(0, 1)
            params["class_embedding"] = jax.random.normal(k_emb, (inputs.source_logits.shape[1], z.shape[1]), jnp.float32)
        state = {
            "disc_opt": domainbed_adam(hp.lr_d, hp.weight_decay_d, hp.beta1).init(params),
            "gen_opt": domainbed_adam(hp.lr_g, hp.weight_decay_g, hp.beta1).init(inputs.params),
        }
        return TermState(params=params, state=state)

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        z, y, env = environment_batch(inputs, name)
        loss, penalty, logits = discriminator_loss(
            term_state.params, z, y, env, len(inputs.sources()), inputs.source_logits.shape[1], conditional, hp
        )
        metrics = {"disc_loss": loss, "grad_penalty": penalty, "disc_accuracy": jnp.mean(jnp.argmax(logits, -1) == env)}
        return -hp.dann_lambda * loss, term_state.state, metrics

    return StatefulTerm(init, apply)


@register_stateful_loss(
    "dann_alt",
    description="DANN over the training environments, DomainBed's alternating discriminator/generator Adam steps",
    reference="Ganin et al., 'Domain-Adversarial Training of Neural Networks', JMLR 2016; DomainBed's DANN",
    trainer=TRAINER,
)
def dann_alt_term(
    dann_lambda: float = 1.0, lr_d: float = 1e-3, lr_g: float = 1e-3, weight_decay_d: float = 0.0,
    weight_decay_g: float = 0.0, beta1: float = 0.5, d_steps_per_g_step: int = 1, grad_penalty: float = 0.0,
    mlp_width: int = 256, mlp_depth: int = 3,
) -> StatefulTerm:
    """DomainBed's DANN (unconditional), trained by the ``dann_alt`` trainer (module doc; SMALL_IMAGES defaults)."""
    return _make_term(
        "dann_alt", False, dann_lambda=dann_lambda, lr_d=lr_d, lr_g=lr_g, weight_decay_d=weight_decay_d,
        weight_decay_g=weight_decay_g, beta1=beta1, d_steps_per_g_step=d_steps_per_g_step,
        grad_penalty=grad_penalty, mlp_width=mlp_width, mlp_depth=mlp_depth,
    )


@register_stateful_loss(
    "cdann_alt",
    description="CDANN over the training environments, DomainBed's alternating discriminator/generator Adam steps",
    reference="Li et al., 'Deep Domain Generalization via Conditional Invariant Adversarial Networks', ECCV 2018; "
              "DomainBed's CDANN",
    trainer=TRAINER,
)
def cdann_alt_term(
    dann_lambda: float = 1.0, lr_d: float = 1e-3, lr_g: float = 1e-3, weight_decay_d: float = 0.0,
    weight_decay_g: float = 0.0, beta1: float = 0.5, d_steps_per_g_step: int = 1, grad_penalty: float = 0.0,
    mlp_width: int = 256, mlp_depth: int = 3,
) -> StatefulTerm:
    """DomainBed's CDANN (class embedding added to z, class-balanced loss), trained by the ``dann_alt`` trainer."""
    return _make_term(
        "cdann_alt", True, dann_lambda=dann_lambda, lr_d=lr_d, lr_g=lr_g, weight_decay_d=weight_decay_d,
        weight_decay_g=weight_decay_g, beta1=beta1, d_steps_per_g_step=d_steps_per_g_step,
        grad_penalty=grad_penalty, mlp_width=mlp_width, mlp_depth=mlp_depth,
    )
