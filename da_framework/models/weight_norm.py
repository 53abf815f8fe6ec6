"""A weight-normalised linear layer, ``torch.nn.utils.weight_norm(nn.Linear(d, k))`` in Flax.

Salimans & Kingma, "Weight Normalization", NeurIPS 2016: each output unit's weight vector is
``w_j = g_j * v_j / ||v_j||``, with the direction ``v`` and the length ``g`` trained separately.
SHOT's hypothesis (tim-learn/SHOT ``digit/network.py``, ``feat_classifier(type="wn")``) is this
layer over the bottleneck, and torch's ``weight_norm`` starts ``g`` at ``||v||``, so the first
forward equals the plain linear layer's.  Flax's ``nn.WeightNorm`` starts its scale at 1
instead, which is why the project has this small module.

Parameters: ``kernel`` (d, k), the direction v in Flax's (in, out) layout (torch's
``weight_v`` transposed); ``scale`` (k,), the length g (torch's ``weight_g``, shape (k, 1));
``bias`` (k,).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class WeightNormDense(nn.Module):
    """Dense layer ``x @ (v * g / ||v||_columns) + b`` (module doc).

    Attributes:
      features: number of outputs k.
      kernel_init: initialiser of the direction v (Flax's Dense default, LeCun normal).
    """

    features: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``x`` (batch, d) to (batch, features)."""
        v = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        g = self.param("scale", lambda _key, shape: jnp.linalg.norm(v, axis=0).reshape(shape), (self.features,))
        b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        w = v * (g / jnp.linalg.norm(v, axis=0))
        return x @ w.astype(x.dtype) + b.astype(x.dtype)
