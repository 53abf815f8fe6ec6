"""Vision Transformer backbones (Dosovitskiy et al., "An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale", ICLR 2021).

The backbone of the transformer-based adaptation methods (e.g. Xu et al., "CDTrans", ICLR
2022; Yang et al., "TVT", WACV 2023): non-overlapping patches embedded by a strided
convolution, a learned class token and position embeddings, pre-LayerNorm encoder blocks
(multi-head self-attention and a GELU MLP, each with a residual connection), and the final
LayerNorm of the class token as the feature vector.  ``vit_b16`` is ViT-Base/16 (86M
parameters, 768 features); ``vit_tiny`` is a small configuration for tests and CPU runs.
Its only normalisation is LayerNorm, so it has no mutable state (no ``batch_stats``).

The arithmetic is timm's ``vision_transformer`` (``vit_base_patch16_224``), so imported timm
weights (:mod:`da_framework.transfer.pretrained`) reproduce its features: LayerNorm epsilon
1e-6, biased q/k/v projections scaled by ``head_dim ** -0.5``, the exact (erf) GELU, the
position embedding covering the class token, and the final LayerNorm's class token as the
pooled feature (timm's ``global_pool="token"``; its ``fc_norm`` is the identity there).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.errors import UserError


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    gelu_approximate: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps tokens (batch, tokens, width) to tokens of the same shape."""
        y = nn.LayerNorm(epsilon=1e-6, name="norm1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attention")(y, y)
        y = nn.LayerNorm(epsilon=1e-6, name="norm2")(x)
        y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
        y = nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(y, approximate=self.gelu_approximate))
        return x + y


class ViT(nn.Module):
    """A Vision Transformer feature extractor returning the class token's features.

    Attributes:
      patch: patch side in pixels (the image side must be a multiple of it).
      width: token width (hidden size).
      depth: number of encoder blocks.
      num_heads: attention heads (must divide ``width``).
      mlp_dim: hidden width of each block's MLP.
      gelu_approximate: True: GELU's tanh approximation (Flax's ``nn.gelu`` default);
        False (default): the exact erf form, as torch's ``nn.GELU()`` and timm compute it.
    """

    patch: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    gelu_approximate: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps images (batch, H, W, C) to features (batch, width)."""
        del train  # no dropout or batch statistics
        if x.ndim != 4 or x.shape[1] % self.patch or x.shape[2] % self.patch:
            raise UserError(
                f"ViT expects images (batch, H, W, C) with H and W multiples of the patch size "
                f"{self.patch}; got shape {x.shape}"
            )
        if self.width % self.num_heads:
            raise UserError(f"ViT width {self.width} is not divisible by num_heads {self.num_heads}")
        x = nn.Conv(self.width, (self.patch, self.patch), self.patch, padding="VALID", name="embedding")(x)
        b, h, w, c = x.shape
        x = jnp.reshape(x, (b, h * w, c))
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c)).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w + 1, c)).astype(x.dtype)
        x = x + pos
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.gelu_approximate, name=f"block{i}")(x)
        return nn.LayerNorm(epsilon=1e-6, name="norm")(x[:, 0])


ViTB16 = functools.partial(ViT, patch=16, width=768, depth=12, num_heads=12, mlp_dim=3072)
ViTTiny = functools.partial(ViT, patch=4, width=32, depth=2, num_heads=2, mlp_dim=64)
