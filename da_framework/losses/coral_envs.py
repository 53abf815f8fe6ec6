"""CORAL over environments: DomainBed's mean-and-covariance distance of every environment pair.

Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV-W 2016,
in DomainBed's domain-generalisation form (``domainbed/algorithms.py``, ``CORAL``, the
``"mean_cov"`` kernel of ``AbstractMMD``): for the features of environments x and y,

    d(x, y) = mean_j (mu_x - mu_y)_j^2 + mean_jk (C_x - C_y)_jk^2,

with ``C`` the unbiased (n - 1) covariance, averaged over the K (K - 1) / 2 pairs and weighted
by ``mmd_gamma`` (default 1.0; search space ``10**U(-1, 1)``, DomainBed's
``hparams_registry.py``).  Unlike the two-domain :mod:`~da_framework.losses.coral` term
(``||C_S - C_T||_F^2 / (4 d^2)``, no mean term) it matches the means too and averages
instead of summing.  Method: ``"cross_entropy + coral_envs"``; the term includes its weight.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_feature_pair, check_min_batch, compute_dtype
from da_framework.losses.coral import covariance
from da_framework.losses.dg_common import labelled_views, mean_over_pairs
from da_framework.losses.registry import LossInputs, register_loss


def mean_cov_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """DomainBed's ``mean_cov`` distance of two (n, d) feature batches (n, m >= 2)."""
    check_feature_pair(x, y, "coral_envs")
    check_min_batch(x, 2, "coral_envs")
    check_min_batch(y, 2, "coral_envs")
    dtype = compute_dtype(x)
    x, y = x.astype(dtype), y.astype(dtype)
    mean_diff = jnp.mean((jnp.mean(x, 0) - jnp.mean(y, 0)) ** 2)
    return mean_diff + jnp.mean((covariance(x) - covariance(y)) ** 2)


@register_loss(
    "coral_envs",
    description="CORAL over environment pairs: mean and covariance gaps (DomainBed's CORAL)",
    reference="Sun & Saenko, ECCV-W 2016, in Gulrajani & Lopez-Paz's DomainBed form (ICLR 2021)",
)
def coral_envs_term(inputs: LossInputs, mmd_gamma: float = 1.0) -> jax.Array:
    """``mmd_gamma *`` the mean over source-environment pairs of :func:`mean_cov_distance`."""
    views = labelled_views(inputs, "coral_envs")
    pairs = [mean_cov_distance(a.features, b.features) for a, b in itertools.combinations(views, 2)]
    return mmd_gamma * mean_over_pairs(pairs)
