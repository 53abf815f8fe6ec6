"""Sliced Wasserstein distance between source and target features.

Bonneel, Rabin, Peyre & Pfister, "Sliced and Radon Wasserstein Barycenters of Measures",
JMIV 2015 (the definition); its use as a differentiable loss between two sets of samples
follows Deshpande, Zhang & Schwing, "Generative Modeling Using the Sliced Wasserstein
Distance", CVPR 2018.  The registered term ``swd`` applies it to domain adaptation as a
feature-alignment discrepancy (like MMD or CORAL): SW between the source and the target
features of the shared encoder, minimised together with the source cross-entropy.

    SW_p^p(S, T) = E_{theta ~ U(S^{d-1})} W_p^p(theta^T S, theta^T T),

estimated with ``num_projections`` random unit directions.  In 1-D the optimal transport
plan is monotone, so W_p^p between the empirical measures (1/n) sum delta_{a_i} and
(1/m) sum delta_{b_j} is the integral over u in (0, 1] of |F_a^{-1}(u) - F_b^{-1}(u)|^p: both
quantile functions are step functions, constant between the merged levels {i/n} U {j/m},
so the integral is an exact finite sum (for n = m: the mean of |sort(a) - sort(b)|^p).

This is *not* the "Sliced Wasserstein Discrepancy" of Lee, Batra, Baig & Ulbricht (CVPR
2019), which replaces MCD's L1 classifier discrepancy by SW between the *predictions of two
classifiers on target data* and trains with MCD's three-step adversarial schedule
(:mod:`da_framework.methods.mcd`); that method is not implemented here.  The name ``swd``
(sliced Wasserstein distance) is kept because benchmark records use it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from da_framework.losses.checks import check_feature_pair, compute_dtype
from da_framework.losses.registry import LossError, LossInputs, register_loss


def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interval widths and the sorted-sample indices of both quantile functions on them."""
    levels = np.sort(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    widths = np.diff(np.concatenate([[0.0], levels]))
    mids = levels - widths / 2.0
    idx_a = np.clip(np.floor(mids * n).astype(np.int32), 0, n - 1)
    idx_b = np.clip(np.floor(mids * m).astype(np.int32), 0, m - 1)
    return widths, idx_a, idx_b


def wasserstein_1d(a: jax.Array, b: jax.Array, p: float = 2.0) -> jax.Array:
    """W_p^p between the empirical measures of the columns of a (n, L) and b (m, L).

    Returns:
      (L,) the exact 1-D optimal transport cost per column (uniform weights).
    """
    n, m = a.shape[0], b.shape[0]
    widths, idx_a, idx_b = _quantile_grid(n, m)
    qa, qb = jnp.sort(a, axis=0)[idx_a], jnp.sort(b, axis=0)[idx_b]
    return jnp.sum(jnp.asarray(widths, a.dtype)[:, None] * jnp.abs(qa - qb) ** p, axis=0)


def sliced_wasserstein(
    source: jax.Array, target: jax.Array, key: jax.Array, num_projections: int = 128, p: float = 2.0
) -> jax.Array:
    """Monte-Carlo sliced Wasserstein SW_p^p between two feature batches.

    Args:
      source: (n, d) source features.
      target: (m, d) target features (m may differ from n).
      key: PRNG key of the random projection directions.
      num_projections: number of directions drawn uniformly on the unit sphere.
      p: the ground-cost exponent, >= 1.

    Returns:
      the scalar mean over directions of W_p^p, in float32 (float64 inputs stay float64);
      zero on identical batches, symmetric, invariant to the order of examples.

    Raises:
      LossError: for bad shapes, num_projections < 1 or p < 1.
    """
    check_feature_pair(source, target, "sliced_wasserstein")
    if int(num_projections) != num_projections or num_projections < 1:
        raise LossError(f"sliced_wasserstein: num_projections must be an integer >= 1, got {num_projections!r}")
    if isinstance(p, (int, float)) and not p >= 1:
        raise LossError(f"sliced_wasserstein: p must be >= 1, got {p!r}")
    dtype = compute_dtype(source)
    theta = jax.random.normal(key, (source.shape[1], int(num_projections)), dtype)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    return jnp.mean(wasserstein_1d(source.astype(dtype) @ theta, target.astype(dtype) @ theta, p))


@register_loss(
    "swd",
    description="sliced Wasserstein distance SW_2^2 between source and target features (feature alignment; "
    "not Lee et al.'s two-classifier SWD)",
    reference="Bonneel et al., 'Sliced and Radon Wasserstein Barycenters of Measures', JMIV 2015; "
    "Deshpande et al., 'Generative Modeling Using the Sliced Wasserstein Distance', CVPR 2018",
)
def swd_term(inputs: LossInputs, num_projections: int = 128, p: float = 2.0) -> jax.Array:
    """Sliced Wasserstein between the step's source and target features (fresh directions each step).

    Feature alignment, not Lee et al.'s (CVPR 2019) discrepancy between two classifiers' target
    predictions; see the module doc.
    """
    return sliced_wasserstein(inputs.source_features, inputs.target_features, inputs.key, num_projections, p)
