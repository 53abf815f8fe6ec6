"""LeNet-style CNN for digits (the backbone of DANN/ADDA digit experiments).

``lenet`` (:class:`LeNet` defaults): conv(20, 5x5) -> max-pool -> ReLU -> conv(50, 5x5) ->
[dropout] -> max-pool -> ReLU -> flatten -> dense(500) -> ReLU, with "SAME" padding so it
works at 16, 28 or 32 pixels (28x28 input: 7*7*50 = 2,450 flattened features).

``lenet_tllib`` (:func:`lenet_tllib`): Transfer-Learning-Library's digits LeNet
(``tllib/vision/models/digits.py``, ``LeNet``): "VALID" convolutions (28x28 input: 4*4*50 =
800 flattened features), ``Dropout2d(0.5)`` after the second convolution (whole channels
dropped: the mask is shared over H and W) and ``Dropout(0.5)`` after the dense ReLU; the
features are the 500-d output.  Not reproduced: PyTorch's default initialisation (uniform
+-1/sqrt(fan_in) for weights and biases; flax uses LeCun-normal weights and zero biases).

``lenet_shot`` (:func:`lenet_shot`): SHOT's digits ``LeNetBase`` (tim-learn/SHOT
``digit/network.py``): tllib's convolutions and ``Dropout2d(0.5)`` with no dense layer, so the
features are the 800 flattened values (``dense=0``).

``input_mean``/``input_std`` normalise the input, ``(x - mean) / std`` (tllib's digits
scripts: ``--norm-mean 0.5 --norm-std 0.5`` on images in [0, 1]); the defaults 0 and 1 leave
it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from da_framework.models.classifier import flatten_features
from da_framework.models.pooling import max_pool


class LeNet(nn.Module):
    """LeNet feature extractor.

    Attributes:
      channels: output channels of the two convolutions.
      dense: width of the final dense layer (the feature width); 0: no dense layer, the
        features are the flattened convolution output.
      dropout: element-wise dropout rate after the last convolution (training only).
      padding: padding of the convolutions, ``"SAME"`` or ``"VALID"``.
      channel_dropout: channel dropout rate after the last convolution (PyTorch's
        ``Dropout2d``: one Bernoulli draw per example and channel, shared over H and W).
      dense_dropout: dropout rate after the final dense ReLU (training only).
      input_mean: subtracted from the input.
      input_std: the centred input is divided by it.
    """

    channels: Sequence[int] = (20, 50)
    dense: int = 500
    dropout: float = 0.0
    padding: str = "SAME"
    channel_dropout: float = 0.0
    dense_dropout: float = 0.0
    input_mean: float = 0.0
    input_std: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps images (batch, H, W, C) to features (batch, dense)."""
        if self.input_mean != 0.0 or self.input_std != 1.0:
            x = (x - self.input_mean) / self.input_std
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (5, 5), padding=self.padding)(x)
            if i == len(self.channels) - 1:
                if self.dropout:
                    x = nn.Dropout(self.dropout, deterministic=not train)(x)
                if self.channel_dropout:
                    x = nn.Dropout(self.channel_dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
            x = max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(x)
        x = flatten_features(x)
        if not self.dense:
            return x
        x = nn.relu(nn.Dense(self.dense)(x))
        if self.dense_dropout:
            x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
        return x


def lenet_tllib(**overrides: Any) -> LeNet:
    """Transfer-Learning-Library's digits LeNet: ``LeNet(padding="VALID", channel_dropout=0.5, dense_dropout=0.5)``.

    Args:
      **overrides: any :class:`LeNet` field, e.g. ``input_mean=0.5, input_std=0.5``.
    """
    return LeNet(**{"padding": "VALID", "channel_dropout": 0.5, "dense_dropout": 0.5, **overrides})


def lenet_shot(**overrides: Any) -> LeNet:
    """SHOT's digits LeNetBase: ``LeNet(padding="VALID", channel_dropout=0.5, dense=0)`` (800 features at 28x28).

    Args:
      **overrides: any :class:`LeNet` field, e.g. ``input_mean=0.5, input_std=0.5``.
    """
    return LeNet(**{"padding": "VALID", "channel_dropout": 0.5, "dense": 0, **overrides})
