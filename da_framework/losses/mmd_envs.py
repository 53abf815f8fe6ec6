"""MMD over environments: DomainBed's Gaussian-kernel MMD of every environment pair.

Li, Pan, Wang & Kot, "Domain Generalization with Adversarial Feature Learning", CVPR 2018
(MMD-AAE's MMD regulariser), in DomainBed's form (``domainbed/algorithms.py``, ``MMD``, the
``"gaussian"`` kernel of ``AbstractMMD``): with squared distances D and the sum of kernels
``k(a, b) = sum_g exp(-g ||a - b||^2)`` over ``g in (0.001, 0.01, 0.1, 1, 10, 100, 1000)``,

    MMD(x, y) = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)

(the biased estimate, diagonals included), averaged over the K (K - 1) / 2 environment pairs
and weighted by ``mmd_gamma`` (default 1.0; search space ``10**U(-1, 1)``).  The fixed
bandwidths act on raw squared distances (no median or mean-distance scaling, unlike the
two-domain :mod:`~da_framework.losses.mmd` term).  Method: ``"cross_entropy + mmd_envs"``;
the term includes its weight.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_feature_pair, compute_dtype
from da_framework.losses.dg_common import labelled_views, mean_over_pairs
from da_framework.losses.mmd import pairwise_sq_distances
from da_framework.losses.registry import LossError, LossInputs, register_loss

DOMAINBED_GAMMAS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def gaussian_kernel_sum(x: jax.Array, y: jax.Array, gammas: Sequence[float] = DOMAINBED_GAMMAS) -> jax.Array:
    """(n, m) matrix ``sum_g exp(-g ||x_i - y_j||^2)`` (DomainBed's ``gaussian_kernel``)."""
    d2 = pairwise_sq_distances(x, y)
    return sum(jnp.exp(-g * d2) for g in gammas)


def gaussian_mmd(x: jax.Array, y: jax.Array, gammas: Sequence[float] = DOMAINBED_GAMMAS) -> jax.Array:
    """DomainBed's biased multi-kernel MMD of two (n, d) feature batches."""
    check_feature_pair(x, y, "mmd_envs")
    if not gammas:
        raise LossError("mmd_envs: gammas must be a non-empty tuple of kernel widths")
    dtype = compute_dtype(x)
    x, y = x.astype(dtype), y.astype(dtype)
    kxx, kyy, kxy = (jnp.mean(gaussian_kernel_sum(a, b, gammas)) for a, b in ((x, x), (y, y), (x, y)))
    return kxx + kyy - 2.0 * kxy


@register_loss(
    "mmd_envs",
    description="Gaussian-kernel MMD over environment pairs, fixed bandwidths (DomainBed's MMD)",
    reference="Li et al., 'Domain Generalization with Adversarial Feature Learning', CVPR 2018; DomainBed's MMD",
)
def mmd_envs_term(inputs: LossInputs, mmd_gamma: float = 1.0, gammas: tuple[float, ...] = DOMAINBED_GAMMAS
                  ) -> jax.Array:
    """``mmd_gamma *`` the mean over source-environment pairs of :func:`gaussian_mmd`."""
    views = labelled_views(inputs, "mmd_envs")
    pairs = [gaussian_mmd(a.features, b.features, gammas) for a, b in itertools.combinations(views, 2)]
    return mmd_gamma * mean_over_pairs(pairs)
