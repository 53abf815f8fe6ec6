"""Strided convolutions whose input gradient is fast on XLA:CPU.

JAX differentiates a stride-s convolution's input into a convolution with ``lhs_dilation=s``
(a transposed convolution).  XLA:CPU runs that form far slower than the forward when the kernel
is large against the stride and the channels are many: on the 2-core AMD EPYC, for tllib's
DTN layer 128 -> 256 channels, 5x5, stride 2 on 8x8 inputs (batch 64), the forward takes 16 ms
and the input gradient 225-243 ms; at 3x3 the same layer's input gradient is 5.6 ms.

:func:`strided_conv` keeps the forward and the kernel gradient as JAX writes them and computes
the input gradient by *phases* (polyphase decomposition of the transposed convolution): the
input positions with the same index modulo the stride receive the output gradient convolved,
at stride 1, with the sub-kernel of the taps that reach them, so a 5x5 stride-2 kernel gives
four stride-1 convolutions with 3x3, 3x2, 2x3 and 2x2 kernels, no multiplication by an inserted
zero, and one interleave.  For the layer above: 8.8 ms; for DTN's 64 -> 128 layer on 16x16,
11.0 ms against 20-26 ms.  It is the same sum of the same products in another order: gradients
agree to float rounding (``tests/test_strided_conv.py`` checks them against JAX's own, a float64
reference and odd shapes, strides and paddings).

:class:`StridedConv` is ``flax.linen.Conv`` with this gradient (same ``kernel``/``bias``
parameters and initialisers), used where it was measured to pay (``models/dtn.py``); on other
backends it is the plain convolution.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _plain(x: jax.Array, k: jax.Array, stride: tuple[int, int], padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, k, stride, padding, dimension_numbers=_DN)


def _phase(size: int, stride: int, lo: int, r: int) -> tuple[int, int]:
    """First and last index m of the padded input positions ``stride * m + r`` inside the input
    (``lo <= stride * m + r < lo + size``)."""
    return -(-(lo - r) // stride), (lo + size - 1 - r) // stride


def polyphase_input_grad(g: jax.Array, k: jax.Array, x_shape: tuple[int, ...], stride: tuple[int, int],
                         padding: Padding) -> jax.Array:
    """The input gradient of the stride-``stride`` convolution of NHWC ``x`` (shape ``x_shape``)
    and HWIO ``k`` with explicit ``padding``, for the output gradient ``g``, as ``sh * sw``
    stride-1 convolutions, one per phase (module docstring).

    Input position ``p`` (``p + lo = s * m + r``) receives ``sum_q g[m - q] k[s * q + r]``: for
    phase ``r`` a stride-1 convolution of ``g`` with the sub-kernel ``k[r::s]`` flipped (input
    and output channels swapped), over exactly the ``m`` that land inside the input.  The phases
    are interleaved by a stack and a reshape.
    """
    n, h, w, c = x_shape
    (sh, sw), ((pt, _), (pl, _)) = stride, padding
    lh, lw = -(-h // sh), -(-w // sw)  # rows and columns per phase, after padding to equal length
    blocks: dict[tuple[int, int], jax.Array] = {}
    for rh in range(sh):
        for rw in range(sw):
            (mh0, mh1), (mw0, mw1) = _phase(h, sh, pt, rh), _phase(w, sw, pl, rw)
            sub = jnp.flip(k[rh::sh, rw::sw], (0, 1)).transpose(0, 1, 3, 2)  # (Qh, Qw, O, C)
            qh, qw = sub.shape[:2]
            if qh and qw:
                # output t reads g[t + j - lo]; it must read g[m - Q + 1 + j] with t = m - m0
                lo_h, lo_w = qh - 1 - mh0, qw - 1 - mw0
                hi_h, hi_w = (mh1 - mh0) + qh - g.shape[1] - lo_h, (mw1 - mw0) + qw - g.shape[2] - lo_w
                gp = jnp.pad(g, ((0, 0), (max(lo_h, 0), max(hi_h, 0)), (max(lo_w, 0), max(hi_w, 0)), (0, 0)))
                gp = gp[:, max(-lo_h, 0):gp.shape[1] - max(-hi_h, 0), max(-lo_w, 0):gp.shape[2] - max(-hi_w, 0)]
                blk = lax.conv_general_dilated(gp, sub, (1, 1), "VALID", dimension_numbers=_DN)
            else:  # the kernel is smaller than the stride: this phase's positions get no gradient
                blk = jnp.zeros((n, mh1 - mh0 + 1, mw1 - mw0 + 1, c), g.dtype)
            blk = jnp.pad(blk, ((0, 0), (0, lh - blk.shape[1]), (0, lw - blk.shape[2]), (0, 0)))
            blocks[(sh * mh0 + rh - pt, sw * mw0 + rw - pl)] = blk  # its first input row and column
    out = jnp.stack([jnp.stack([blocks[(a, b)] for b in range(sw)], axis=3) for a in range(sh)], axis=2)
    return out.reshape(n, lh * sh, lw * sw, c)[:, :h, :w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def strided_conv(x: jax.Array, k: jax.Array, stride: tuple[int, int], padding: Padding) -> jax.Array:
    """``lax.conv_general_dilated(x, k, stride, padding)`` (NHWC, HWIO) with its input gradient
    computed by :func:`polyphase_input_grad`; forward and kernel gradient are JAX's own."""
    return _plain(x, k, stride, padding)


def _fwd(x: jax.Array, k: jax.Array, stride: tuple[int, int], padding: Padding):
    return _plain(x, k, stride, padding), (x, k)


def _bwd(stride: tuple[int, int], padding: Padding, res: tuple[jax.Array, jax.Array], g: jax.Array):
    x, k = res
    dk = jax.vjp(lambda k: _plain(x, k, stride, padding), k)[1](g)[0]
    return polyphase_input_grad(g, k, x.shape, stride, padding).astype(x.dtype), dk


strided_conv.defvjp(_fwd, _bwd)


class StridedConv(nn.Module):
    """``nn.Conv(features, kernel_size, strides, padding)`` over NHWC images whose input
    gradient on XLA:CPU goes through :func:`strided_conv` (module docstring).

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: ((top, bottom), (left, right)), explicit.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    padding: Padding

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolves ``x`` (batch, H, W, C) and adds the bias."""
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        stride, padding = tuple(self.strides), tuple(tuple(p) for p in self.padding)
        fast = jax.default_backend() == "cpu" and max(stride) > 1
        y = strided_conv(x, kernel, stride, padding) if fast else _plain(x, kernel, stride, padding)
        return y + bias
