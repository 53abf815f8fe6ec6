"""SHOT: source-free adaptation by information maximisation and self-supervised pseudo-labels.

Liang, Hu & Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
Unsupervised Domain Adaptation", ICML 2020, in the form of the authors' digits code
(tim-learn/SHOT ``digit/uda_digit.py``, read at commit 3bad26d; ``digit/digit.sh`` sets
``--cls_par 0.1``).  A source model -- encoder g (backbone and bottleneck) and hypothesis h
(the classifier ``head``) -- is trained on labelled source data with label smoothing; then h is
frozen and g alone is trained on *unlabelled target data only* (no source example is read) with

    L = ent_par * L_IM + cls_par * CE(h(g(x_t)), yhat),

* ``L_IM`` = mean_i H(p_i) - diversity_weight * H(mean_i p_i), the information maximisation
  of :func:`~da_framework.losses.entropy.information_maximization` (SHOT's ``gent`` is
  ``diversity_weight`` 1; SHOT adds 1e-5 inside the diversity term's log, this uses xlogy);
* ``yhat`` the self-supervised pseudo-labels of :func:`cluster_pseudo_labels`, recomputed for
  every target train example from the whole split once per target epoch (``interval``).

``cls_par = 0`` is SHOT-IM.  The trainer is :mod:`da_framework.methods.shot`; this module holds
the pure pieces and the ``shot`` term (hyper-parameters and the pseudo-label table, its state).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from da_framework.losses.dg_trainers import checked_number
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

TRAINER = "shot"


class ShotHparams(NamedTuple):
    """The checked hyper-parameters of the ``shot`` term (see :func:`shot_term`)."""

    pretrain_steps: int
    cls_par: float
    ent_par: float
    diversity_weight: float
    interval: int
    rounds: int
    reset_optimizer: bool
    phase_schedule: bool


def _integer(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LossError(f"shot: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_hparams(**hp: Any) -> ShotHparams:
    """The term's hyper-parameters checked; a bad one raises a one-line LossError naming it."""
    for flag in ("reset_optimizer", "phase_schedule"):
        if not isinstance(hp[flag], bool):
            raise LossError(f"shot: {flag} must be True or False, got {hp[flag]!r}")
    nonneg = lambda v: math.isfinite(v) and v >= 0
    return ShotHparams(
        pretrain_steps=_integer(hp["pretrain_steps"], "pretrain_steps", 1),
        cls_par=checked_number(hp["cls_par"], "shot", "cls_par", nonneg, "a finite number >= 0"),
        ent_par=checked_number(hp["ent_par"], "shot", "ent_par", nonneg, "a finite number >= 0"),
        diversity_weight=checked_number(hp["diversity_weight"], "shot", "diversity_weight", nonneg,
                                        "a finite number >= 0"),
        interval=_integer(hp["interval"], "interval", 0),
        rounds=_integer(hp["rounds"], "rounds", 0),
        reset_optimizer=hp["reset_optimizer"],
        phase_schedule=hp["phase_schedule"],
    )


def _nearest_centroid(feats: jax.Array, centroids: jax.Array, valid: jax.Array) -> jax.Array:
    """argmin of the cosine distance of unit-norm ``feats`` (n, d) to ``centroids`` (k, d); invalid ones never win."""
    norms = jnp.linalg.norm(centroids, axis=1)
    cosine = (feats @ centroids.T) / jnp.where(norms > 0, norms, 1.0)
    return jnp.argmax(jnp.where(valid[None, :], cosine, -jnp.inf), axis=1).astype(jnp.int32)


def cluster_pseudo_labels(features: jax.Array, probs: jax.Array, rounds: int = 1, eps: float = 1e-8) -> jax.Array:
    """SHOT's self-supervised pseudo-labels of a whole target set (``obtain_label`` of the digits code).

    1. Append a constant 1 to every feature and scale each to unit L2 norm.
    2. Initial centroids, weighted by the predictions:  c_k = sum_i p_ik f_i / (eps + sum_i p_ik).
    3. Label each example by its nearest centroid in cosine distance.
    4. ``rounds`` times: centroids of the hard labels, c_k = mean of the f_i labelled k, and label again.

    Args:
      features: (n, d) eval-mode features of every target example.
      probs: (n, k) their softmax predictions by the frozen hypothesis.
      rounds: hard-label re-clustering rounds (SHOT: 1).
      eps: added to each centroid's weight (SHOT: 1e-8).

    Returns:
      (n,) int32 labels in [0, k).  A class that no example holds after a round has no centroid
      in the next (SHOT's ``cdist`` would give it a NaN distance); ties go to the lower class.

    Raises:
      LossError: for non-2-D inputs or a different number of rows.
    """
    if features.ndim != 2 or probs.ndim != 2 or features.shape[0] != probs.shape[0] or features.shape[0] == 0:
        raise LossError(f"cluster_pseudo_labels: needs (n, d) features and (n, k) probabilities with the same n > 0, "
                        f"got {features.shape} and {probs.shape}")
    f = jnp.concatenate([features.astype(jnp.float32), jnp.ones((features.shape[0], 1), jnp.float32)], axis=1)
    f = f / jnp.linalg.norm(f, axis=1, keepdims=True)
    p = probs.astype(jnp.float32)
    k = p.shape[1]
    labels = _nearest_centroid(f, (p.T @ f) / (eps + jnp.sum(p, axis=0))[:, None], jnp.ones((k,), bool))
    for _ in range(rounds):
        onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
        counts = jnp.sum(onehot, axis=0)
        labels = _nearest_centroid(f, (onehot.T @ f) / (eps + counts)[:, None], counts > 0)
    return labels


def shot_target_loss(target_logits: jax.Array, pseudo_labels: jax.Array, cls_par: float, ent_par: float,
                     diversity_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SHOT's adaptation objective on one target batch: ``ent_par * L_IM + cls_par * CE(logits, pseudo_labels)``.

    Returns:
      ``(loss, {"im": L_IM, "pseudo_ce": the cross-entropy})``.
    """
    from da_framework.losses.classification import cross_entropy
    from da_framework.losses.entropy import information_maximization

    im = information_maximization(target_logits, diversity_weight)
    ce = cross_entropy(target_logits, pseudo_labels)
    return ent_par * im + cls_par * ce, {"im": im, "pseudo_ce": ce}


@register_stateful_loss(
    "shot",
    description="SHOT: source training, then source-free target adaptation of the encoder by information "
                "maximisation and clustered pseudo-labels, head frozen (own trainer)",
    reference="Liang, Hu & Feng, 'Do We Really Need to Access the Source Data? Source Hypothesis Transfer for "
              "Unsupervised Domain Adaptation', ICML 2020",
    trainer=TRAINER,
)
def shot_term(
    pretrain_steps: int = 2500, cls_par: float = 0.1, ent_par: float = 1.0, diversity_weight: float = 1.0,
    interval: int = 0, rounds: int = 1, reset_optimizer: bool = True, phase_schedule: bool = False,
) -> StatefulTerm:
    """SHOT's settings and its pseudo-label table (the term's state); as a term, the target objective.

    Hyper-parameters: ``pretrain_steps`` (source steps before the source-free phase), ``cls_par``
    (pseudo-label weight; 0: SHOT-IM), ``ent_par`` (information-maximisation weight), ``diversity_weight``,
    ``interval`` (steps between pseudo-label refreshes; 0: one target epoch, ceil(n / batch) as
    SHOT's loader), ``rounds`` (hard re-clustering rounds) and ``reset_optimizer`` (SHOT's target
    phase builds a fresh SGD optimiser and learning-rate schedule).  ``phase_schedule=True`` is
    SHOT's schedule exactly: the trainer scales each update by ``(1 + 10 i / T)^-0.75``, i = 1..T
    the update's number within its phase and T the phase's length (``lr_scheduler`` in
    ``digit/uda_digit.py``), and the run's ``lr_schedule`` must be ``"constant"``.  The state is
    ``{"labels": (n,) int32, "label_accuracy": scalar}``, sized by the trainer's ``prepare``.
    """
    check_hparams(pretrain_steps=pretrain_steps, cls_par=cls_par, ent_par=ent_par, diversity_weight=diversity_weight,
                  interval=interval, rounds=rounds, reset_optimizer=reset_optimizer, phase_schedule=phase_schedule)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        del key, inputs
        return TermState(params={}, state={"labels": jnp.zeros((0,), jnp.int32),
                                           "label_accuracy": jnp.zeros((), jnp.float32)})

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        raise LossError("shot: its loss needs the target batch's example indices; run it with trainer=shot (or auto)")

    return StatefulTerm(init, apply)
