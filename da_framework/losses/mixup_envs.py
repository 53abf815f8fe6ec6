"""Inter-domain Mixup: train on convex combinations of two environments' minibatches.

Yan, Song, Li, Zou & Ren, "Improve Unsupervised Domain Adaptation with Mixup Training",
arXiv:2001.00677 (2020), and Wang, Li & Kot, "Heterogeneous Domain Generalization via
Domain Mixup", ICASSP 2020 (arXiv:1912.01805): the two papers DomainBed cites.  The variant
is DomainBed's (``domainbed/algorithms.py``, ``Mixup``, with ``misc.random_pairs_of_minibatches``):
the K environments are put in a random order ``perm`` and each is paired with the next
(cyclically); for pair (i, j) with ``lam ~ Beta(alpha, alpha)``, ``x = lam x_i + (1 - lam) x_j``
is passed through the model and the objective is

    (1/K) sum_pairs [ lam CE(f(x), y_i) + (1 - lam) CE(f(x), y_j) ].

This term *is* the whole objective (DomainBed's Mixup has no plain ERM part): the method is
``"mixup"`` alone.  It re-runs the model on the K mixed batches in one call of
``inputs.apply_model`` (the step's forward pass on the unmixed batch is then unused).
Randomness: ``perm`` and the K lambdas from the term's key (:func:`mixup_draws`).  Default
``mixup_alpha = 0.2`` (DomainBed's ``hparams_registry.py``; search space ``10**U(-1, 1)``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from da_framework.losses.classification import cross_entropy
from da_framework.losses.dg_common import labelled_views
from da_framework.losses.registry import LossError, LossInputs, register_loss


def mixup_draws(key: jax.Array, num_envs: int, alpha: float) -> tuple[jax.Array, jax.Array]:
    """The random environment order and the K mixing weights: ``split(key)`` -> permutation, Beta(alpha, alpha)."""
    k_perm, k_lam = jax.random.split(key)
    return jax.random.permutation(k_perm, num_envs), jax.random.beta(k_lam, alpha, alpha, (num_envs,))


def mixup_objective(
    apply_fn: Callable[[jax.Array], jax.Array], xs: jax.Array, ys: jax.Array, perm: jax.Array, lams: jax.Array
) -> jax.Array:
    """DomainBed's Mixup objective for given draws.

    Args:
      apply_fn: inputs (K * n, ...) -> logits (K * n, k).
      xs: (K, n, ...) inputs of the K environments.
      ys: (K, n) their labels.
      perm: (K,) environment order; pair p is (perm[p], perm[(p + 1) % K]).
      lams: (K,) mixing weight of pair p's first environment.

    Returns:
      ``(1/K) sum_p [lam_p CE(f(x_p), y_i) + (1 - lam_p) CE(f(x_p), y_j)]``.
    """
    num_envs, n = ys.shape
    first, second = perm, jnp.roll(perm, -1)
    lam_x = lams.reshape((num_envs,) + (1,) * (xs.ndim - 1)).astype(xs.dtype)
    mixed = lam_x * xs[first] + (1 - lam_x) * xs[second]
    logits = apply_fn(mixed.reshape((num_envs * n,) + xs.shape[2:])).reshape(num_envs, n, -1)
    ce = jax.vmap(cross_entropy)
    return jnp.sum(lams * ce(logits, ys[first]) + (1 - lams) * ce(logits, ys[second])) / num_envs


@register_loss(
    "mixup",
    description="inter-domain Mixup of environment pairs (DomainBed's Mixup; the whole objective, use alone)",
    reference="Yan et al., arXiv:2001.00677 (2020); Wang et al., ICASSP 2020; DomainBed's Mixup",
)
def mixup_term(inputs: LossInputs, mixup_alpha: float = 0.2) -> jax.Array:
    """Mixup over the step's labelled environments, the model re-run on the mixed inputs."""
    views = labelled_views(inputs, "mixup")
    if inputs.apply_model is None or inputs.params is None or any(v.inputs is None for v in views):
        raise LossError("mixup: needs the raw inputs and apply_model of the step (run it through the trainer)")
    if not mixup_alpha > 0:
        raise LossError(f"mixup: mixup_alpha must be > 0, got {mixup_alpha!r}")
    xs = jnp.stack([v.inputs for v in views])
    ys = jnp.stack([v.labels for v in views])
    perm, lams = mixup_draws(inputs.key, len(views), mixup_alpha)
    return mixup_objective(lambda x: inputs.apply_model(inputs.params, x)[0], xs, ys, perm, lams)
