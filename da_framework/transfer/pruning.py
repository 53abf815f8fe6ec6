"""Magnitude pruning: one-shot or gradual, global or per layer, with masks kept by optax.

* :func:`magnitude_masks` - boolean keep-masks that zero exactly ``round(s * n)`` of the
  prunable weights with the smallest magnitude, ranked over all prunable leaves together
  (``scope="global"``) or within each leaf (``scope="layer"``, ``round(s * n_leaf)`` each).
  Ties are broken by position (a stable sort), so the count is exact.
* :func:`polynomial_sparsity` - the gradual schedule of Zhu & Gupta, "To prune, or not to
  prune: exploring the efficacy of pruning for model compression", ICLR-W 2018
  (arXiv:1710.01878, 2017), eq. (1):
  s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n dt))^3 for t in {t_0, t_0 + dt, ..., t_0 + n dt}.
* :func:`keep_masks` - an optax transformation (chain it *last*) that re-applies fixed
  masks after every update: pruned weights stay exactly zero through fine-tuning, whatever
  momentum or weight decay the optimiser before it uses.
* :func:`gradual_pruning` - the same, but recomputing the masks every ``frequency`` steps
  from the schedule (Zhu & Gupta's training-time pruning), masks kept in the optimiser
  state.

"Prunable" leaves are those whose path matches ``include`` (default: every ``kernel``, i.e.
dense and convolution weights; biases and normalisation scales are never pruned).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from da_framework.transfer.weights import PathFilter, TransferError, flatten, map_paths, matches

Scope = Literal["global", "layer"]
DEFAULT_PRUNABLE = r"kernel$"


def prunable_paths(params: Any, include: PathFilter = DEFAULT_PRUNABLE) -> list[str]:
    """Sorted paths of the leaves that pruning may zero."""
    return sorted(p for p in flatten(params) if matches(p, include))


def _keep_smallest_pruned(values: jax.Array, num_pruned: jax.Array) -> jax.Array:
    """True for all but the ``num_pruned`` smallest entries of the 1-D ``values`` (stable ties)."""
    order = jnp.argsort(values, stable=True)
    ranks = jnp.zeros(values.shape, jnp.int32).at[order].set(jnp.arange(values.size, dtype=jnp.int32))
    return ranks >= num_pruned


def _check_sparsity(sparsity: Any) -> None:
    if isinstance(sparsity, (int, float)) and not 0.0 <= sparsity <= 1.0:
        raise TransferError(f"sparsity must be in [0, 1], got {sparsity!r}")


def magnitude_masks(
    params: Any, sparsity: float | jax.Array, *, scope: Scope = "global", include: PathFilter = DEFAULT_PRUNABLE
) -> Any:
    """Keep-masks (True = kept) pruning the smallest-magnitude prunable weights.

    Args:
      params: parameter tree.
      sparsity: fraction in [0, 1] of prunable weights to zero (may be traced).
      scope: ``"global"`` ranks all prunable weights together; ``"layer"`` prunes each
        prunable leaf to ``sparsity`` on its own.
      include: regex(es) selecting the prunable leaves by path.

    Returns:
      a tree of bool arrays shaped like ``params`` (all True on non-prunable leaves).
    """
    _check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise TransferError(f"unknown pruning scope {scope!r}; valid: global, layer")
    flat = flatten(params)
    paths = prunable_paths(params, include)
    if not paths:
        raise TransferError(f"no prunable leaf matches include={include!r}")
    masks = {p: jnp.ones(jnp.shape(v), bool) for p, v in flat.items()}
    if scope == "layer":
        for p in paths:
            mag = jnp.abs(flat[p]).ravel()
            k = jnp.round(sparsity * mag.size).astype(jnp.int32)
            masks[p] = _keep_smallest_pruned(mag, k).reshape(jnp.shape(flat[p]))
        return map_paths(lambda path, leaf: masks[path], params)
    mags = jnp.concatenate([jnp.abs(flat[p]).ravel().astype(jnp.float32) for p in paths])
    keep = _keep_smallest_pruned(mags, jnp.round(sparsity * mags.size).astype(jnp.int32))
    start = 0
    for p in paths:
        n = int(jnp.size(flat[p]))
        masks[p] = keep[start : start + n].reshape(jnp.shape(flat[p]))
        start += n
    return map_paths(lambda path, leaf: masks[path], params)


def apply_masks(params: Any, masks: Any) -> Any:
    """Zeroes the pruned entries (``params * mask``, keeping dtypes)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def prune(params: Any, sparsity: float, *, scope: Scope = "global", include: PathFilter = DEFAULT_PRUNABLE) -> tuple[Any, Any]:
    """One-shot magnitude pruning: returns ``(pruned_params, masks)``."""
    masks = magnitude_masks(params, sparsity, scope=scope, include=include)
    return apply_masks(params, masks), masks


def sparsity(params: Any, include: PathFilter = DEFAULT_PRUNABLE) -> float:
    """Fraction of exactly-zero entries among the prunable leaves."""
    flat = flatten(params)
    paths = prunable_paths(params, include)
    total = sum(int(jnp.size(flat[p])) for p in paths)
    zeros = sum(int(jnp.sum(flat[p] == 0)) for p in paths)
    return zeros / max(total, 1)


def polynomial_sparsity(
    final_sparsity: float, begin_step: int, end_step: int, frequency: int = 1, initial_sparsity: float = 0.0
) -> Callable[[jax.Array], jax.Array]:
    """Zhu & Gupta (2017) eq. (1): cubic ramp from ``initial`` to ``final`` sparsity.

    Sparsity changes only at ``begin_step + j * frequency`` (held in between), is
    ``initial_sparsity`` before ``begin_step`` and ``final_sparsity`` from ``end_step`` on.

    Returns:
      ``schedule(step) -> sparsity`` (jittable).
    """
    _check_sparsity(final_sparsity)
    _check_sparsity(initial_sparsity)
    if end_step <= begin_step or frequency <= 0:
        raise TransferError(f"need begin_step < end_step and frequency > 0; got {begin_step}, {end_step}, {frequency}")

    def schedule(step: jax.Array) -> jax.Array:
        t = jnp.asarray(step, jnp.float32)
        t = begin_step + jnp.floor((t - begin_step) / frequency) * frequency  # hold between updates
        frac = jnp.clip((t - begin_step) / (end_step - begin_step), 0.0, 1.0)
        return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** 3

    return schedule


def _masked_updates(updates: Any, params: Any, masks: Any) -> Any:
    # p + (-p) == 0 exactly, so pruned entries are zero after apply_updates.
    return jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), updates, params, masks)


def keep_masks(masks: Any) -> optax.GradientTransformation:
    """Optax transformation making pruned entries exactly zero after every update (chain it last)."""

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        if params is None:
            raise TransferError("keep_masks needs params in tx.update(grads, state, params)")
        return _masked_updates(updates, params, masks), state

    return optax.GradientTransformation(init_fn, update_fn)


class GradualPruningState(NamedTuple):
    """State of :func:`gradual_pruning`: steps seen and the current keep-masks."""

    count: jax.Array
    masks: Any


def gradual_pruning(
    schedule: Callable[[jax.Array], jax.Array],
    begin_step: int,
    end_step: int,
    frequency: int,
    *,
    scope: Scope = "global",
    include: PathFilter = DEFAULT_PRUNABLE,
) -> optax.GradientTransformation:
    """Training-time magnitude pruning (Zhu & Gupta 2017) as an optax transformation.

    At update ``t`` in ``{begin_step, begin_step + frequency, ...} <= end_step`` the masks
    are recomputed from the magnitudes of the updated weights at sparsity
    ``schedule(t)``; at every update the current masks are applied, so pruned weights are
    exactly zero after each step.  Chain it last, after the optimiser.
    """

    def init_fn(params: Any) -> GradualPruningState:
        return GradualPruningState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

    def update_fn(updates: Any, state: GradualPruningState, params: Any = None) -> tuple[Any, GradualPruningState]:
        if params is None:
            raise TransferError("gradual_pruning needs params in tx.update(grads, state, params)")
        t = state.count
        due = (t >= begin_step) & (t <= end_step) & ((t - begin_step) % frequency == 0)
        candidate = optax.apply_updates(params, updates)
        masks = jax.lax.cond(
            due,
            lambda: magnitude_masks(apply_masks(candidate, state.masks), schedule(t), scope=scope, include=include),
            lambda: state.masks,
        )
        return _masked_updates(updates, params, masks), GradualPruningState(t + 1, masks)

    return optax.GradientTransformation(init_fn, update_fn)
