"""DTN: the 32x32 RGB digits CNN of Transfer-Learning-Library's SVHN -> MNIST protocol.

``dtn`` is ``tllib/vision/models/digits.py`` ``DTN`` (itself the network of CDAN's
``pytorch/network.py`` for SVHN -> MNIST, Long et al., "Conditional Adversarial Domain
Adaptation", NeurIPS 2018): three 5x5 stride-2 convolutions of 64, 128 and 256 channels, each
padded by 2 on every side (PyTorch's ``padding=2``; Flax's ``"SAME"`` would pad 1 before and 2
after at stride 2 and shift every window), each followed by BatchNorm, channel dropout
(``Dropout2d`` 0.1, 0.3, 0.5: one draw per example and channel, shared over H and W) and ReLU;
then flatten (32x32 input: 4*4*256 = 4,096 features), dense 512, BatchNorm, ReLU and
``Dropout(0.5)``.  The features are the 512-d output.

The convolutions are :class:`da_framework.models.strided_conv.StridedConv` (``nn.Conv``'s
parameters; on XLA:CPU a faster input gradient, measured in that module's docstring).
BatchNorm is :class:`da_framework.models.batchnorm.BatchNorm` (torch's momentum 0.1 and unbiased
running variance), so torch weights and statistics give torch's outputs.  Not reproduced:
PyTorch's default initialisation (uniform +-1/sqrt(fan_in); Flax uses LeCun-normal weights and
zero biases), and Flax flattens (H, W, C) where torch flattens (C, H, W), so importing a torch
dense kernel needs its rows permuted (``tests/test_dtn.py`` shows how).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from da_framework.models.batchnorm import BatchNorm
from da_framework.models.classifier import flatten_features
from da_framework.models.strided_conv import StridedConv


class DTN(nn.Module):
    """tllib's DTN feature extractor (see the module docstring).

    Attributes:
      channels: output channels of the three convolutions.
      channel_dropout: ``Dropout2d`` rate after each convolution's BatchNorm.
      dense: width of the dense layer (the feature width).
      dense_dropout: dropout rate after the dense layer's ReLU.
      input_mean: subtracted from the input.
      input_std: the centred input is divided by it.
    """

    channels: Sequence[int] = (64, 128, 256)
    channel_dropout: Sequence[float] = (0.1, 0.3, 0.5)
    dense: int = 512
    dense_dropout: float = 0.5
    input_mean: float = 0.0
    input_std: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps images (batch, H, W, C) to features (batch, dense)."""
        if len(self.channel_dropout) != len(self.channels):
            raise ValueError(f"DTN: channel_dropout has {len(self.channel_dropout)} rates for "
                             f"{len(self.channels)} convolutions; give one rate per convolution")
        if self.input_mean != 0.0 or self.input_std != 1.0:
            x = (x - self.input_mean) / self.input_std
        for i, (c, rate) in enumerate(zip(self.channels, self.channel_dropout)):
            x = StridedConv(c, (5, 5), (2, 2), ((2, 2), (2, 2)), name=f"Conv_{i}")(x)
            x = BatchNorm(use_running_average=not train)(x)
            if rate:
                x = nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not train)(x)
            x = nn.relu(x)
        x = nn.Dense(self.dense)(flatten_features(x))
        x = nn.relu(BatchNorm(use_running_average=not train)(x))
        if self.dense_dropout:
            x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
        return x
