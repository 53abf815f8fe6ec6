"""Max-pooling whose gradient is cheap on XLA:CPU.

``flax.linen.max_pool`` lowers to ``reduce_window``; its gradient, as JAX differentiates it,
is a variadic ``reduce_window`` that carries one ``iota`` index array per window dimension and a
``scatter`` back into the input.  On XLA:CPU that gradient costs several times the forward
pass: on the 2-core AMD EPYC of ``docs/performance.md`` it was about 40% of a LeNet train step
(``benchmarks/step_throughput.py``; the breakdown is in that document).

:func:`max_pool` computes the same function for the common case of non-overlapping windows
(window == stride, no padding needed) by reshaping the input into its windows and taking the
maximum, with a hand-written gradient that sends the incoming gradient to the *first* maximum of
each window in row-major window order.  That is the element ``reduce_window``'s gradient picks,
so the gradient is bitwise the same, ties included (``tests/test_pooling.py`` checks both
against ``flax.linen.max_pool`` on inputs full of ties); it needs only element-wise operations,
which XLA fuses.  Other windows, strides and paddings fall back to ``flax.linen.max_pool``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import flax.linen as nn
import jax
import jax.numpy as jnp


def _windows(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """(N, *spatial, C) -> (N, s1 // k1, k1, s2 // k2, k2, ..., C): the windows as axes."""
    shape = [x.shape[0]]
    for s, k in zip(x.shape[1:-1], window):
        shape += [s // k, k]
    return x.reshape(*shape, x.shape[-1])


def _window_axes(ndim: int) -> tuple[int, ...]:
    """The in-window axes of :func:`_windows`'s output for ``ndim`` spatial dimensions."""
    return tuple(2 + 2 * i for i in range(ndim))


def _pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """Non-overlapping max-pool, forward only."""
    return _windows(x, window).max(axis=_window_axes(len(window)))


def _pool_fwd(x: jax.Array, window: tuple[int, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    xw = _windows(x, window)
    m = xw.max(axis=_window_axes(len(window)))
    return m, (xw, m)


def _pool_bwd(window: tuple[int, ...], res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    xw, m = res
    axes = _window_axes(len(window))
    m_b = jnp.expand_dims(m, axes)
    is_max = xw == m_b
    # The first maximum in row-major window order takes the gradient (reduce_window's choice).
    # A window with no element equal to its maximum (NaN) sends it to its last element.
    taken = jnp.zeros(m.shape, bool)
    picks = {}
    offsets = list(product(*(range(k) for k in window)))
    for n, off in enumerate(offsets):
        index = [slice(None)] * xw.ndim
        for ax, o in zip(axes, off):
            index[ax] = o
        here = is_max[tuple(index)] & ~taken if n < len(offsets) - 1 else ~taken
        taken = taken | here
        picks[off] = jnp.where(here, g, jnp.zeros_like(g))
    # (N, s1', s2', ..., C, k1, k2, ...) -> (N, s1', k1, s2', k2, ..., C) -> the input's shape.
    d = len(window)
    stacked = jnp.stack([picks[off] for off in offsets], axis=-1).reshape(*m.shape, *window)
    order = [0] + [a for i in range(d) for a in (1 + i, m.ndim + i)] + [m.ndim - 1]
    gw = stacked.transpose(order)
    gx = gw.reshape(gw.shape[0], *(m.shape[1 + i] * k for i, k in enumerate(window)), gw.shape[-1])
    # Materialised, as reduce_window's scatter materialises it: consumers (a convolution's
    # gradient, a bias's sum) then see the same buffer and reduce it in the same order.
    return (jax.lax.optimization_barrier(gx),)


_fast_pool = jax.custom_vjp(_pool, nondiff_argnums=(1,))
_fast_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool(
    x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None, padding: str = "VALID"
) -> jax.Array:
    """Max-pooling over the spatial axes of ``x`` (N, *spatial, C), as ``flax.linen.max_pool``.

    Args:
      x: inputs, batch first and features last.
      window_shape: the pooling window, one size per spatial axis.
      strides: the strides (default: the window, i.e. non-overlapping windows).
      padding: ``"VALID"``, ``"SAME"`` or explicit pairs, as ``flax.linen.max_pool``.

    Returns:
      The pooled array; with window == strides dividing every spatial size (then "SAME" pads
      nothing) it is computed by :func:`_fast_pool`, whose gradient is bitwise that of
      ``flax.linen.max_pool`` and much cheaper on XLA:CPU; otherwise by ``flax.linen.max_pool``.
    """
    window = tuple(int(k) for k in window_shape)
    strides = window if strides is None else tuple(int(s) for s in strides)
    spatial = x.shape[1:-1]
    fast = (
        strides == window
        and len(window) == len(spatial)
        and isinstance(padding, str)
        and padding in ("VALID", "SAME")
        and all(s % k == 0 for s, k in zip(spatial, window))
    )
    if not fast:
        return nn.max_pool(x, window, strides=strides, padding=padding)
    return _fast_pool(x, window)
