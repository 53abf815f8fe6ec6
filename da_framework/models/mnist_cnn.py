"""DomainBed's MNIST CNN: the featurizer of its RotatedMNIST and ColoredMNIST results.

``MNIST_CNN`` of facebookresearch/DomainBed ``domainbed/networks.py`` (Gulrajani &
Lopez-Paz, ICLR 2021): four 3x3 convolutions with padding 1 -- 64 channels, then 128 with
stride 2, then 128 and 128 -- each followed by ReLU and then GroupNorm(8 groups), and a mean
over the spatial positions: 128 features (a 28x28 input becomes 14x14 after the stride).
DomainBed's classifier on top is one linear layer (``Classifier(backbone=MNISTCNN(), ...)``
with no bottleneck).  GroupNorm uses PyTorch's epsilon 1e-5; initialisation is flax's
(LeCun-normal weights, zero biases), not PyTorch's uniform +-1/sqrt(fan_in).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MNISTCNN(nn.Module):
    """DomainBed's MNIST_CNN featurizer.

    Attributes:
      channels: output channels of the four convolutions.
      strides: their strides.
      groups: GroupNorm groups.
    """

    channels: Sequence[int] = (64, 128, 128, 128)
    strides: Sequence[int] = (1, 2, 1, 1)
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps images (batch, H, W, C) to features (batch, channels[-1])."""
        del train  # no dropout, no batch statistics
        for c, s in zip(self.channels, self.strides):
            x = nn.Conv(c, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)))(x)
            x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5)(nn.relu(x))
        return jnp.mean(x, axis=(1, 2))
