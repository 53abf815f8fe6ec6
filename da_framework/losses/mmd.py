"""Maximum mean discrepancy with a Gaussian multi-kernel (DAN).

Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation Networks",
ICML 2015.  Gretton et al., "A Kernel Two-Sample Test", JMLR 2012 (estimators).

For kernels k_u(x, y) = exp(-||x - y||^2 / (2 sigma_u^2)) and k = (1/U) sum_u k_u,

    MMD^2_b(S, T) = mean_{i,j} k(s_i, s_j) + mean_{i,j} k(t_i, t_j) - 2 mean_{i,j} k(s_i, t_j)

(the biased V-statistic, Gretton eq. 5).  The unbiased U-statistic drops the i = j terms of
the two within-domain means (Gretton eq. 3).  The linear-time estimator (Gretton Lemma 14,
used by DAN for O(n) cost) pairs consecutive examples z_i = (s_{2i-1}, t_{2i-1}),
z'_i = (s_{2i}, t_{2i}) and averages

    h(z, z') = k(s, s') + k(t, t') - k(s, t') - k(s', t)

over the floor(min(n, m) / 2) pairs; it is unbiased but noisier.  Following DAN, the
bandwidths are multiples ``alphas`` of the mean pairwise squared distance of the joint batch,
held constant (stop-gradient) within a step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_feature_pair
from da_framework.losses.registry import LossError, LossInputs, register_loss

DEFAULT_ALPHAS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)


def pairwise_sq_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Returns the (n, m) matrix of squared Euclidean distances between rows of x and y.

    Computed as ||x||^2 + ||y||^2 - 2 x y^T (one matrix product, O(n m) memory) after
    subtracting the mean of the rows of both arrays from each: the expansion cancels
    catastrophically in float32 when the rows share a large offset (features far from the
    origin), while the distances themselves do not depend on the centre.  The centre is held
    constant for differentiation, which changes nothing since the distances do not depend
    on it; so the result is invariant to a common translation of x and y up to rounding of
    the centred values.
    """
    centre = jax.lax.stop_gradient((jnp.sum(x, 0) + jnp.sum(y, 0)) / (x.shape[0] + y.shape[0]))
    x, y = x - centre, y - centre
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
      estimator: ``"biased"`` (V-statistic, >= 0), ``"unbiased"`` (U-statistic,
        needs n, m >= 2, may be slightly negative) or ``"linear"`` (Gretton Lemma 14,
        O(n) time, needs n, m >= 2; uses the first 2*floor(min(n, m)/2) rows of each batch
        in the given order, so it depends on batch order, unlike the other two).
      sq_scale: fixed base squared bandwidth; None (default) uses the mean pairwise squared
        distance of the joint batch, without gradient (for ``"linear"``: the mean squared
        distance of the pairs the estimator evaluates, so the cost stays linear).

    Returns:
      the scalar MMD^2 estimate in float32.
    """
    check_feature_pair(source, target, "mk_mmd")
    if estimator not in ("biased", "unbiased", "linear"):
        raise LossError(f"mk_mmd: unknown estimator {estimator!r}; valid: 'biased', 'unbiased', 'linear'")
    dtype = jnp.promote_types(source.dtype, jnp.float32)
    s, t = source.astype(dtype), target.astype(dtype)
    if estimator == "linear":
        return _linear_mk_mmd(s, t, alphas, sq_scale)
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


def _linear_mk_mmd(
    s: jax.Array, t: jax.Array, alphas: Sequence[float], sq_scale: float | jax.Array | None
) -> jax.Array:
    """The linear-time MMD^2 estimate of Gretton et al. (2012), Lemma 14."""
    n_pairs = min(s.shape[0], t.shape[0]) // 2
    if n_pairs < 1:
        raise LossError(
            f"mk_mmd: the linear estimator needs >= 2 examples per domain, got {s.shape[0]} and {t.shape[0]}"
        )
    s1, s2 = s[0 : 2 * n_pairs : 2], s[1 : 2 * n_pairs : 2]
    t1, t2 = t[0 : 2 * n_pairs : 2], t[1 : 2 * n_pairs : 2]
    # squared distances of the four pairs in h, each (n_pairs,): ss', tt', st', s't
    d2 = jnp.stack([jnp.sum((a - b) ** 2, axis=1) for a, b in ((s1, s2), (t1, t2), (s1, t2), (s2, t1))])
    if sq_scale is None:
        sq_scale = jax.lax.stop_gradient(jnp.mean(d2))
    sq_scale = jnp.maximum(jnp.asarray(sq_scale, s.dtype), 1e-12)
    k = jnp.mean(jnp.stack([jnp.exp(-d2 / (2.0 * a * sq_scale)) for a in alphas]), axis=0)  # (4, n_pairs)
    return jnp.mean(k[0] + k[1] - k[2] - k[3])


@register_loss(
    "mmd",
    description="Gaussian multi-kernel MMD^2 between source and target features (DAN)",
    reference="Long et al., 'Learning Transferable Features with Deep Adaptation Networks', ICML 2015",
)
def mmd_term(inputs: LossInputs, estimator: str = "biased", alphas: tuple[float, ...] = DEFAULT_ALPHAS) -> jax.Array:
    """MK-MMD between the step's source and target features (``alphas``: the kernels' bandwidth
    multipliers, a tuple: ``mmd(alphas=(0.5, 1.0, 2.0))``)."""
    alphas = tuple(alphas) if isinstance(alphas, (tuple, list)) else alphas
    if not alphas or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in alphas):
        raise LossError(f"mmd: alphas must be a non-empty tuple of numbers > 0, e.g. (0.5, 1.0, 2.0); got {alphas!r}")
    return mk_mmd(inputs.source_features, inputs.target_features, alphas=alphas, estimator=estimator)
