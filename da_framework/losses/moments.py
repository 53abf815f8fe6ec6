"""Moment matching of arbitrary (intermediate) activations.

Peng, Bai, Xia, Huang, Saenko & Wang, "Moment Matching for Multi-Source Domain Adaptation"
(M3SDA), ICCV 2019 for one source-target pair: with element-wise raw moments E(X^k),

    MD_K(S, T) = sum_{k=1}^{K} || E(S^k) - E(T^k) ||_2 .

:func:`moment_distance` takes arrays of any rank: expectations run over the batch axis 0
and any further ``reduce_axes`` (e.g. the spatial axes of a (n, h, w, c) feature map, to
match per-channel moments), and the norm runs over what is left.  Use it on any layer you
can reach in a custom term; the registered ``moments`` term matches the adaptation features.

With N labelled source domains, M3SDA's moment distance (eq. 1, Peng et al.) also aligns the
sources with each other:

    MD^2 = sum_{k=1}^{K} [ (1/N) sum_i ||E(X_i^k) - E(X_T^k)||_2
                           + C(N, 2)^{-1} sum_{i<j} ||E(X_i^k) - E(X_j^k)||_2 ],

:func:`multi_source_moment_distance`, registered as ``m3sda`` (the moment-matching part of
M3SDA only: not its per-source classifiers nor their weighted vote).  With one source it equals
``moments``; several unlabelled targets are pooled into one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from da_framework.losses.checks import compute_dtype
from da_framework.losses.cmd import safe_norm
from da_framework.losses.registry import LossError, LossInputs, register_loss


def moment_distance(source: jax.Array, target: jax.Array, order: int = 2, reduce_axes: Sequence[int] = ()) -> jax.Array:
    """Sum over k = 1..order of the L2 distance of the k-th raw moments (M3SDA).

    Args:
      source: (n, ...) activations of the source batch, any rank >= 1.
      target: (m, ...) activations of the target batch with the same trailing shape.
      order: K >= 1, the highest moment matched.
      reduce_axes: further axes (> 0, of the input) averaged over besides the batch axis,
        e.g. ``(1, 2)`` for the spatial axes of NHWC feature maps.

    Returns:
      the scalar distance in float32 (float64 inputs stay float64); zero on identical
      batches, symmetric, invariant to the order of examples.

    Raises:
      LossError: for mismatched trailing shapes, an empty batch, rank 0, bad axes or order.
    """
    if source.ndim < 1 or target.ndim < 1:
        raise LossError(f"moment_distance: inputs need a batch axis, got shapes {source.shape} and {target.shape}")
    if source.shape[1:] != target.shape[1:]:
        raise LossError(
            f"moment_distance: source and target shapes differ after the batch axis ({source.shape} vs "
            f"{target.shape}); both must come from the same layer"
        )
    if source.shape[0] == 0 or target.shape[0] == 0:
        raise LossError(f"moment_distance: empty batch (shapes {source.shape}, {target.shape})")
    if int(order) != order or order < 1:
        raise LossError(f"moment_distance: order must be an integer >= 1, got {order!r}")
    axes = tuple(int(a) for a in reduce_axes)
    if any(a <= 0 or a >= source.ndim for a in axes):
        raise LossError(
            f"moment_distance: reduce_axes {tuple(reduce_axes)} must be in 1..{source.ndim - 1} "
            f"(axis 0 is the batch and always reduced)"
        )
    axes = (0, *sorted(set(axes)))
    dtype = compute_dtype(source)
    x, y = source.astype(dtype), target.astype(dtype)
    total = jnp.zeros((), dtype)
    for k in range(1, int(order) + 1):
        total = total + safe_norm(jnp.mean(x**k, axis=axes) - jnp.mean(y**k, axis=axes))
    return total


@register_loss(
    "moments",
    description="distance of the first K raw moments of source and target features (M3SDA)",
    reference="Peng et al., 'Moment Matching for Multi-Source Domain Adaptation', ICCV 2019",
)
def moments_term(inputs: LossInputs, order: int = 2) -> jax.Array:
    """Moment distance of orders 1..order between the step's source and target features."""
    return moment_distance(inputs.source_features, inputs.target_features, order)


def multi_source_moment_distance(
    sources: Sequence[jax.Array], target: jax.Array, order: int = 2, reduce_axes: Sequence[int] = ()
) -> jax.Array:
    """M3SDA's moment distance of N source batches and a target batch (Peng et al., ICCV 2019, eq. 1).

    Args:
      sources: N >= 1 arrays (n_i, ...) of the same trailing shape, one per source domain.
      target: (m, ...) target activations.
      order: K, the highest moment matched.
      reduce_axes: as in :func:`moment_distance`.

    Returns:
      the mean over sources of their distance to the target plus the mean over source
      pairs of their distance to each other (no pair term for N = 1).
    """
    if not sources:
        raise LossError("multi_source_moment_distance: needs at least one source batch")
    to_target = sum(moment_distance(s, target, order, reduce_axes) for s in sources) / len(sources)
    pairs = [(a, b) for i, a in enumerate(sources) for b in sources[i + 1:]]
    if not pairs:
        return to_target
    return to_target + sum(moment_distance(a, b, order, reduce_axes) for a, b in pairs) / len(pairs)


@register_loss(
    "m3sda",
    description="M3SDA moment matching: every source to the target and every source pair to each other",
    reference="Peng et al., 'Moment Matching for Multi-Source Domain Adaptation', ICCV 2019 (eq. 1)",
)
def m3sda_term(inputs: LossInputs, order: int = 2) -> jax.Array:
    """Multi-source moment distance of the step's source domains and its (pooled) target features."""
    return multi_source_moment_distance([v.features for v in inputs.sources()], inputs.target_features, order)
