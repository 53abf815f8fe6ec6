"""ADDA: the domain discriminator, its losses and the ``adda`` term of the ``adda`` trainer.

Tzeng, Hoffman, Saenko & Darrell, "Adversarial Discriminative Domain Adaptation", CVPR 2017.
ADDA first trains a source encoder M_s and a classifier C on labelled source data, then
freezes both and trains a *target* encoder M_t (initialised from M_s) against a domain
discriminator D, so that target features look like source features; the target model is
C(M_t(x)).  With D's logit d and source labelled 1 here:

* discriminator loss (Eq. 8 / DANN's):  L_D = 1/2 [ BCE(d(M_s x_s), 1) + BCE(d(M_t x_t), 0) ]
  (each domain's mean), :func:`~da_framework.losses.adversarial.domain_adversarial_loss`;
* the paper's inverted-label (GAN) encoder loss, Eq. 9:  L_M = BCE(d(M_t x_t), 1)
  (:func:`inverted_label_loss`), ``adversarial="inverted"``;
* tllib's form (``examples/domain_adaptation/image_classification/adda.py`` of
  thuml/Transfer-Learning-Library, read at commit 2e984d3), the default ``adversarial="grl"``:
  one joint gradient step on L_D with a gradient reversal layer between the features and D,
  so D descends L_D and M_t *ascends* it (the minimax, not the inverted-label, objective), the
  reversal strength warming up as tllib's ``WarmStartGradientReverseLayer(alpha=1, lo=0, hi=2,
  max_iters=1000)`` over the adaptation steps (:func:`warm_start_coeff`).

The trainer is :mod:`da_framework.methods.adda`; this term owns D's parameters
(``params["aux"][<key>]``) and, as its state, ``{"source_encoder": ...}``: the frozen M_s (every
model parameter except ``head``), a copy of the initial parameters until the trainer snapshots
the pretrained encoder at the first adaptation step.  Hyper-parameters: ``pretrain_steps`` (tllib:
``--pretrain-epochs 3`` x ``--iters-per-epoch 1000`` = 3000), ``adversarial``, the warm start's
``alpha``, ``lo``, ``hi``, ``max_iters``, D's ``hidden_size`` (tllib 1024) and ``reset_optimizer``
(tllib's adaptation phase builds a fresh SGD optimiser and learning-rate schedule).

Differences from tllib: D is the project's :class:`~da_framework.losses.adversarial.DomainDiscriminator`
(Dense-ReLU x 2, no BatchNorm by default; tllib's has BatchNorm1d after each hidden layer, which
``disc_batch_norm=True`` adds, normalising by the batch's statistics); one optimiser and
schedule (the run's) serve both phases, restarted at the switch when ``reset_optimizer``; the
term's weight in the method spec scales the adversarial loss (tllib has no trade-off, i.e. 1).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.adversarial import DomainDiscriminator, checked_flag, domain_adversarial_loss
from da_framework.losses.checks import check_feature_pair
from da_framework.losses.dg_trainers import checked_number
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

TRAINER = "adda"
ADVERSARIAL = ("grl", "inverted")


class AddaHparams(NamedTuple):
    """The checked hyper-parameters of the ``adda`` term (module doc)."""

    pretrain_steps: int
    adversarial: str
    alpha: float
    lo: float
    hi: float
    max_iters: int
    hidden_size: int
    reset_optimizer: bool
    disc_batch_norm: bool = False


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _integer(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LossError(f"adda: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_hparams(**hp: Any) -> AddaHparams:
    """The term's hyper-parameters checked; a bad one raises a one-line LossError naming it."""
    if hp["adversarial"] not in ADVERSARIAL:
        raise LossError(f"adda: adversarial must be one of {', '.join(ADVERSARIAL)}, got {hp['adversarial']!r}")
    if not isinstance(hp["reset_optimizer"], bool):
        raise LossError(f"adda: reset_optimizer must be True or False, got {hp['reset_optimizer']!r}")
    return AddaHparams(
        pretrain_steps=_integer(hp["pretrain_steps"], "pretrain_steps", 1),
        adversarial=hp["adversarial"],
        alpha=checked_number(hp["alpha"], "adda", "alpha", lambda v: _finite(v) and v > 0, "a finite number > 0"),
        lo=checked_number(hp["lo"], "adda", "lo", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
        hi=checked_number(hp["hi"], "adda", "hi", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
        max_iters=_integer(hp["max_iters"], "max_iters", 1),
        hidden_size=_integer(hp["hidden_size"], "hidden_size", 1),
        reset_optimizer=hp["reset_optimizer"],
        disc_batch_norm=checked_flag(hp.get("disc_batch_norm", False), "adda", "disc_batch_norm"),
    )


def warm_start_coeff(iteration: jax.Array, alpha: float, lo: float, hi: float, max_iters: int) -> jax.Array:
    """tllib's ``WarmStartGradientReverseLayer`` strength at adaptation step ``iteration`` (0, 1, ...).

    ``lambda = 2 (hi - lo) / (1 + exp(-alpha i / N)) - (hi - lo) + lo``: ``lo`` at i = 0, towards ``hi``.
    """
    i = jnp.asarray(iteration, jnp.float32)
    return 2.0 * (hi - lo) / (1.0 + jnp.exp(-alpha * i / max_iters)) - (hi - lo) + lo


def discriminator(hidden_size: int, batch_norm: bool = False) -> DomainDiscriminator:
    """ADDA's domain discriminator D: two hidden layers of ``hidden_size`` units, each followed by a
    batch normalisation when ``batch_norm`` (tllib's layout: ``batch_norm=True``)."""
    return DomainDiscriminator(hidden=(hidden_size, hidden_size), batch_norm=batch_norm)


def inverted_label_loss(target_domain_logits: jax.Array) -> jax.Array:
    """ADDA's encoder loss (Tzeng et al. 2017, Eq. 9): mean BCE of target logits against the *source* label 1."""
    t = jnp.reshape(target_domain_logits, (-1,)).astype(jnp.float32)
    if t.shape[0] == 0:
        raise LossError("inverted_label_loss: empty batch")
    return jnp.mean(optax.sigmoid_binary_cross_entropy(t, jnp.ones_like(t)))


def domain_accuracy(source_domain_logits: jax.Array, target_domain_logits: jax.Array) -> jax.Array:
    """tllib's ``domain_discriminator_accuracy``: the mean of D's accuracy on each domain (source 1, target 0)."""
    return 0.5 * (jnp.mean(source_domain_logits >= 0) + jnp.mean(target_domain_logits < 0))


def encoder_params(model_params: Any) -> dict[str, Any]:
    """Every model parameter except the classifier ``head``: the encoder M (source or target)."""
    if "head" not in model_params:
        raise LossError(f"adda needs a classifier whose parameters hold a 'head', got {sorted(model_params)}")
    return {k: v for k, v in model_params.items() if k != "head"}


@register_stateful_loss(
    "adda",
    description="ADDA: source pretraining, then a target encoder against a domain discriminator, head frozen "
                "(own trainer)",
    reference="Tzeng et al., 'Adversarial Discriminative Domain Adaptation', CVPR 2017",
    trainer=TRAINER,
)
def adda_term(
    pretrain_steps: int = 3000, adversarial: str = "grl", alpha: float = 1.0, lo: float = 0.0, hi: float = 2.0,
    max_iters: int = 1000, hidden_size: int = 1024, reset_optimizer: bool = True, disc_batch_norm: bool = False,
) -> StatefulTerm:
    """D (its parameters are the term's) and the frozen source encoder (its state); as a term, D's loss L_D.

    The schedule (two phases, the snapshot, the updates) is the ``adda`` trainer's
    (:mod:`da_framework.methods.adda`); ``apply`` gives L_D on the step's source and target
    features, with D's accuracy as a metric.
    """
    hp = check_hparams(pretrain_steps=pretrain_steps, adversarial=adversarial, alpha=alpha, lo=lo, hi=hi,
                       max_iters=max_iters, hidden_size=hidden_size, reset_optimizer=reset_optimizer,
                       disc_batch_norm=disc_batch_norm)
    disc = discriminator(hp.hidden_size, hp.disc_batch_norm)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        if inputs.params is None:
            raise LossError("adda: init needs the model's parameters (inputs.params) for the source encoder's copy")
        encoder = jax.tree.map(jnp.array, encoder_params(inputs.params))  # a copy, not an alias
        return TermState(params=disc.init(key, inputs.source_features)["params"], state={"source_encoder": encoder})

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        check_feature_pair(inputs.source_features, inputs.target_features, "adda")
        n_s = inputs.source_features.shape[0]
        logits = disc.apply({"params": term_state.params},
                            jnp.concatenate([inputs.source_features, inputs.target_features]))
        metrics = {"disc_accuracy": domain_accuracy(logits[:n_s], logits[n_s:])}
        return domain_adversarial_loss(logits[:n_s], logits[n_s:]), term_state.state, metrics

    return StatefulTerm(init, apply)
