"""Maximum mean discrepancy with a Gaussian multi-kernel (DAN).

Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation Networks",
ICML 2015.  Gretton et al., "A Kernel Two-Sample Test", JMLR 2012 (estimators).

For kernels k_u(x, y) = exp(-||x - y||^2 / (2 sigma_u^2)) and k = (1/U) sum_u k_u,

    MMD^2_b(S, T) = mean_{i,j} k(s_i, s_j) + mean_{i,j} k(t_i, t_j) - 2 mean_{i,j} k(s_i, t_j)

(the biased V-statistic, Gretton eq. 5).  The unbiased U-statistic drops the i = j terms of
the two within-domain means (Gretton eq. 3).  Following DAN, the bandwidths are multiples
``alphas`` of the mean pairwise squared distance of the joint batch, held constant
(stop-gradient) within a step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_feature_pair
from da_framework.losses.registry import LossError, LossInputs, register_loss

DEFAULT_ALPHAS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)


def pairwise_sq_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Returns the (n, m) matrix of squared Euclidean distances between rows of x and y."""
    d = jnp.sum(x**2, 1)[:, None] + jnp.sum(y**2, 1)[None, :] - 2.0 * x @ y.T
    return jnp.maximum(d, 0.0)


def multi_kernel_matrix(
    x: jax.Array, y: jax.Array, sq_scale: jax.Array, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> jax.Array:
    """Mean of Gaussian kernels exp(-d^2 / (2 alpha sq_scale)) over ``alphas``."""
    d2 = pairwise_sq_distances(x, y)
    return jnp.mean(jnp.stack([jnp.exp(-d2 / (2.0 * a * sq_scale)) for a in alphas]), axis=0)


def mk_mmd(
    source: jax.Array,
    target: jax.Array,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    estimator: str = "biased",
    sq_scale: float | jax.Array | None = None,
) -> jax.Array:
    """Squared multi-kernel MMD between two feature batches (DAN, Long et al. 2015).

    Args:
      source: (n, d) source features.
      target: (m, d) target features.
      alphas: bandwidth multipliers of the mean pairwise squared distance.
      estimator: ``"biased"`` (V-statistic, >= 0) or ``"unbiased"`` (U-statistic,
        needs n, m >= 2, may be slightly negative).
      sq_scale: fixed base squared bandwidth; None (default) uses the mean pairwise squared
        distance of the joint batch, without gradient.

    Returns:
      the scalar MMD^2 estimate in float32.
    """
    check_feature_pair(source, target, "mk_mmd")
    if estimator not in ("biased", "unbiased"):
        raise LossError(f"mk_mmd: unknown estimator {estimator!r}; valid: 'biased', 'unbiased'")
    dtype = jnp.promote_types(source.dtype, jnp.float32)
    s, t = source.astype(dtype), target.astype(dtype)
    if sq_scale is None:
        joint = jnp.concatenate([s, t])
        n_joint = joint.shape[0]
        sq_scale = jax.lax.stop_gradient(
            jnp.sum(pairwise_sq_distances(joint, joint)) / max(n_joint * (n_joint - 1), 1)
        )
    sq_scale = jnp.maximum(jnp.asarray(sq_scale, dtype), 1e-12)
    k_ss = multi_kernel_matrix(s, s, sq_scale, alphas)
    k_tt = multi_kernel_matrix(t, t, sq_scale, alphas)
    k_st = multi_kernel_matrix(s, t, sq_scale, alphas)
    if estimator == "biased":
        return jnp.mean(k_ss) + jnp.mean(k_tt) - 2.0 * jnp.mean(k_st)
    n, m = s.shape[0], t.shape[0]
    if n < 2 or m < 2:
        raise LossError(f"mk_mmd: the unbiased estimator needs >= 2 examples per domain, got {n} and {m}")
    within_s = (jnp.sum(k_ss) - jnp.trace(k_ss)) / (n * (n - 1))
    within_t = (jnp.sum(k_tt) - jnp.trace(k_tt)) / (m * (m - 1))
    return within_s + within_t - 2.0 * jnp.mean(k_st)


@register_loss(
    "mmd",
    description="Gaussian multi-kernel MMD^2 between source and target features (DAN)",
    reference="Long et al., 'Learning Transferable Features with Deep Adaptation Networks', ICML 2015",
)
def mmd_term(inputs: LossInputs, estimator: str = "biased") -> jax.Array:
    """MK-MMD between the step's source and target features."""
    return mk_mmd(inputs.source_features, inputs.target_features, estimator=estimator)
