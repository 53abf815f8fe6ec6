"""Int8 weight quantisation: post-training (PTQ) and quantisation-aware training (QAT).

Symmetric per-channel quantisation (Jacob et al., "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, sec. 2.1, with zero
point 0; per-output-channel scales as in Krishnamoorthi, "Quantizing deep convolutional
networks for efficient inference: A whitepaper", arXiv:1806.08342, 2018, sec. 2.3):
for a weight tensor w and output channel c,

    s_c = max |w[..., c]| / q_max,   q = clip(round(w / s_c), -q_max, q_max),   w_hat = s_c q,

with q_max = 2^(b-1) - 1 (127 for b = 8), so |w - w_hat| <= s_c / 2 entrywise.  Flax
kernels keep output channels on the last axis, the default ``axis=-1``.

QAT trains through :func:`fake_quant`, whose forward pass is w_hat and whose gradient is
the straight-through estimator (Bengio, Leonard & Courville, arXiv:1308.3432, 2013; as
used by Jacob et al. 2018): identity where w lies inside the clipping range
``[-q_max s, q_max s]``, zero outside.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from da_framework.transfer.weights import PathFilter, TransferError, flatten, map_paths, matches

DEFAULT_QUANTIZED = r"kernel$"


def qmax(bits: int) -> int:
    """Largest symmetric integer level, 2^(bits-1) - 1."""
    if not 2 <= bits <= 16:
        raise TransferError(f"bits must be in [2, 16], got {bits}")
    return 2 ** (bits - 1) - 1


def channel_scale(w: jax.Array, bits: int = 8, axis: int = -1) -> jax.Array:
    """Per-channel scale max|w| / q_max along every axis but ``axis`` (kept, size 1 elsewhere); 1 for all-zero channels."""
    axis = axis % w.ndim
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = jnp.max(jnp.abs(w), axis=reduce, keepdims=True) if reduce else jnp.abs(w)
    scale = amax.astype(jnp.float32) / qmax(bits)
    return jnp.where(scale > 0, scale, 1.0)


@flax.struct.dataclass
class QuantizedArray:
    """Integer codes and per-channel scales of one weight tensor.

    Attributes:
      values: int8 codes (int16 for more than 8 bits), same shape as the weight.
      scale: float32 scales, broadcastable to ``values``.
      bits: bit width (static).
    """

    values: jax.Array
    scale: jax.Array
    bits: int = flax.struct.field(pytree_node=False, default=8)

    def dequantize(self) -> jax.Array:
        """The float32 weight ``scale * values``."""
        return self.values.astype(jnp.float32) * self.scale

    @property
    def nbytes(self) -> int:
        """Storage of the codes at ``bits`` per value (packed) plus float32 scales."""
        return -(-int(self.values.size) * self.bits // 8) + 4 * int(self.scale.size)


def quantize(w: jax.Array, bits: int = 8, axis: int = -1) -> QuantizedArray:
    """Symmetric per-channel quantisation of ``w`` (see the module docstring)."""
    scale = channel_scale(w, bits, axis)
    q = jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -qmax(bits), qmax(bits))
    return QuantizedArray(q.astype(jnp.int8 if bits <= 8 else jnp.int16), scale, bits)


def quantize_params(params: Any, bits: int = 8, include: PathFilter = DEFAULT_QUANTIZED) -> Any:
    """Post-training quantisation: matching leaves become :class:`QuantizedArray` (others unchanged)."""
    flat = flatten(params)
    if not any(matches(p, include) for p in flat):
        raise TransferError(f"no parameter matches include={include!r}")
    return map_paths(lambda p, v: quantize(v, bits) if matches(p, include) and jnp.ndim(v) >= 1 else v, params)


def dequantize_params(qparams: Any) -> Any:
    """Float params for evaluation: every :class:`QuantizedArray` leaf dequantised."""
    is_q = lambda x: isinstance(x, QuantizedArray)  # noqa: E731
    return jax.tree.map(lambda x: x.dequantize() if is_q(x) else x, qparams, is_leaf=is_q)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fake_quant(w: jax.Array, scale: jax.Array, bits: int = 8) -> jax.Array:
    """Quantise-dequantise ``w`` with ``scale`` in the forward pass; straight-through gradient.

    Args:
      w: weights.
      scale: per-channel scales broadcastable to ``w`` (not differentiated).
      bits: bit width.

    Returns:
      ``scale * clip(round(w / scale), -q_max, q_max)``; its gradient w.r.t. ``w`` is the
      incoming gradient where ``|w| <= q_max * scale`` and zero elsewhere.
    """
    m = qmax(bits)
    return (jnp.clip(jnp.round(w / scale), -m, m) * scale).astype(w.dtype)


def _fake_quant_fwd(w: jax.Array, scale: jax.Array, bits: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return fake_quant(w, scale, bits), (w, scale)


def _fake_quant_bwd(bits: int, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    w, scale = res
    inside = jnp.abs(w) <= qmax(bits) * scale
    return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(scale)


fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def fake_quantize_params(params: Any, bits: int = 8, include: PathFilter = DEFAULT_QUANTIZED) -> Any:
    """QAT forward transform: matching leaves fake-quantised with their current per-channel scale.

    Use as ``param_transform`` of :func:`da_framework.transfer.finetune.fit`; the scale
    follows max|w| per channel (no gradient through it), so every weight is inside the
    clipping range and the straight-through gradient is the identity.
    """

    def fq(v: jax.Array) -> jax.Array:
        return fake_quant(v, jax.lax.stop_gradient(channel_scale(v, bits)), bits)

    return map_paths(lambda p, v: fq(v) if matches(p, include) and jnp.ndim(v) >= 1 else v, params)
