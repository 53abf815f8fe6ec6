"""LeNet-style CNN for digits (the backbone of DANN/ADDA digit experiments).

Follows the LeNet variant used by Transfer-Learning-Library and ADDA (Tzeng et al., 2017):
conv(20, 5x5) -> max-pool -> ReLU -> conv(50, 5x5) -> dropout -> max-pool -> ReLU ->
flatten -> dense(500) -> ReLU; "SAME" padding so it works at 16, 28 or 32 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from da_framework.models.classifier import flatten_features


class LeNet(nn.Module):
    """LeNet feature extractor.

    Attributes:
      channels: output channels of the two convolutions.
      dense: width of the final dense layer (the feature width).
      dropout: dropout rate after the second convolution (training only).
    """

    channels: Sequence[int] = (20, 50)
    dense: int = 500
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps images (batch, H, W, C) to features (batch, dense)."""
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (5, 5), padding="SAME")(x)
            if i == len(self.channels) - 1 and self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(x)
        x = flatten_features(x)
        return nn.relu(nn.Dense(self.dense)(x))
