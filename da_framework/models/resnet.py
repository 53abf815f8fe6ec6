"""ResNet backbones (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

``ResNet`` covers the small CIFAR-style networks (3x3 stem, no max-pool: ``resnet8``,
``resnet20``) and the ImageNet-style ones (7x7 stem + max-pool: ``resnet18``, ``resnet50``).
Normalisation is BatchNorm by default (running statistics live in the ``batch_stats``
collection, which the train state carries) or GroupNorm (``norm="group"``) for a backbone
with no mutable state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.errors import UserError


def _norm(kind: str, train: bool, name: str | None = None) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    if kind == "group":
        return nn.GroupNorm(num_groups=None, group_size=8, name=name)
    raise UserError(f"unknown norm {kind!r}; valid: 'batch', 'group'")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    filters: int
    strides: int = 1
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the block."""
        y = nn.Conv(self.filters, (3, 3), self.strides, padding="SAME", use_bias=False)(x)
        y = nn.relu(_norm(self.norm, train)(y))
        y = nn.Conv(self.filters, (3, 3), padding="SAME", use_bias=False)(y)
        y = _norm(self.norm, train)(y)
        if x.shape != y.shape:
            x = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False, name="proj")(x)
            x = _norm(self.norm, train, name="proj_norm")(x)
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 (4x expansion) block of ResNet-50 and deeper."""

    filters: int
    strides: int = 1
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the block."""
        y = nn.relu(_norm(self.norm, train)(nn.Conv(self.filters, (1, 1), use_bias=False)(x)))
        y = nn.Conv(self.filters, (3, 3), self.strides, padding="SAME", use_bias=False)(y)
        y = nn.relu(_norm(self.norm, train)(y))
        y = _norm(self.norm, train)(nn.Conv(self.filters * 4, (1, 1), use_bias=False)(y))
        if x.shape != y.shape:
            x = nn.Conv(self.filters * 4, (1, 1), self.strides, use_bias=False, name="proj")(x)
            x = _norm(self.norm, train, name="proj_norm")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet feature extractor returning globally average-pooled features.

    Attributes:
      stage_sizes: number of blocks per stage.
      block: ``BasicBlock`` or ``BottleneckBlock``.
      width: filters of the first stage (doubled at every later stage).
      imagenet_stem: 7x7/2 conv + 3x3/2 max-pool (ImageNet) instead of one 3x3 conv (CIFAR).
      norm: ``"batch"`` or ``"group"``.
      pool: average-pool globally (default); False returns the last feature map
        (batch, H / stride, W / stride, channels), e.g. for a detection head.
    """

    stage_sizes: Sequence[int]
    block: Callable[..., nn.Module] = BasicBlock
    width: int = 16
    imagenet_stem: bool = False
    norm: str = "batch"
    pool: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps images (batch, H, W, C) to features (batch, channels) (see ``pool``)."""
        if self.imagenet_stem:
            x = nn.Conv(self.width, (7, 7), 2, padding=[(3, 3), (3, 3)], use_bias=False)(x)
            x = nn.relu(_norm(self.norm, train)(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        else:
            x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False)(x)
            x = nn.relu(_norm(self.norm, train)(x))
        for stage, n_blocks in enumerate(self.stage_sizes):
            for b in range(n_blocks):
                strides = 2 if stage > 0 and b == 0 else 1
                x = self.block(self.width * 2**stage, strides, self.norm)(x, train=train)
        return jnp.mean(x, axis=(1, 2)) if self.pool else x


ResNet8 = functools.partial(ResNet, stage_sizes=(1, 1, 1), width=16)
ResNet20 = functools.partial(ResNet, stage_sizes=(3, 3, 3), width=16)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), width=64, imagenet_stem=True)
ResNet50 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block=BottleneckBlock, width=64, imagenet_stem=True
)
