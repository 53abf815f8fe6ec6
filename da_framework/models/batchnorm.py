"""Batch normalisation that updates its statistics the way PyTorch does.

Used by the torchvision-layout ResNets (:mod:`da_framework.models.resnet`), so imported
torchvision weights give torch's outputs and running statistics, and by tllib's
BatchNorm bottleneck (:class:`da_framework.models.classifier.Bottleneck`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` in Flax: the same variables as ``nn.BatchNorm`` (params
    ``scale``/``bias``, batch_stats ``mean``/``var``), the running variance updated with the
    unbiased batch variance ``var * n / (n - 1)`` (n = values per channel).

    Statistics are reduced in float32 whatever the input dtype; the output has the input's dtype.

    Attributes:
      use_running_average: normalise with the running statistics (eval mode) instead of the
        batch's, and leave them unchanged.
      momentum: Flax convention: ``new = momentum * old + (1 - momentum) * batch``
        (torch's ``momentum=0.1`` is 0.9 here).
      epsilon: added to the variance (torch's default 1e-5).
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``x`` (..., channels) over every axis but the last."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if not self.is_initializing():
                n = x.size // c
                unbiased = var * (n / (n - 1)) if n > 1 else var
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
        return y.astype(x.dtype)
