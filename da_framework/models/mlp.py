"""A multilayer perceptron backbone (flattens its input; also used for feature vectors)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from da_framework.models.classifier import flatten_features


class MLP(nn.Module):
    """Dense -> ReLU blocks over the flattened input.

    Attributes:
      hidden: widths of the hidden layers; the last one is the feature width.
      dropout: dropout rate after each hidden layer (training only).
    """

    hidden: Sequence[int] = (256, 256)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps inputs of shape (batch, ...) to features (batch, hidden[-1])."""
        x = flatten_features(x)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x
