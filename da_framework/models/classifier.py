"""The model shape every adaptation method relies on: backbone -> bottleneck -> head.

``Classifier.__call__`` returns ``(logits, features)``: the features (bottleneck output, or
backbone output when there is no bottleneck) are what discrepancy and adversarial losses
align.  Parameters live under the names ``backbone``, ``bottleneck`` and ``head``, so weight
transfer, freezing and per-part learning rates can address them by path.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Bottleneck(nn.Module):
    """Dense -> LayerNorm -> ReLU projection of backbone features (TLL/DANN style)."""

    features: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Projects ``x`` of shape (batch, d) to (batch, features)."""
        x = nn.Dense(self.features)(x)
        x = nn.LayerNorm()(x)
        x = nn.relu(x)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x


class Classifier(nn.Module):
    """A backbone, an optional bottleneck and a linear classifier head.

    Attributes:
      backbone: a module mapping inputs to a (batch, d) feature vector; it must accept
        a ``train`` keyword.
      num_classes: number of output logits.
      bottleneck_dim: width of the bottleneck, or None for no bottleneck.
    """

    backbone: nn.Module
    num_classes: int
    bottleneck_dim: int | None = None

    def setup(self) -> None:
        self.bottleneck = Bottleneck(self.bottleneck_dim) if self.bottleneck_dim else None
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns the adaptation features (bottleneck output if any) of inputs ``x``."""
        f = self.backbone(x, train=train)
        if self.bottleneck is not None:
            f = self.bottleneck(f, train=train)
        return f

    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Returns ``(logits, features)`` for inputs ``x``."""
        f = self.features(x, train=train)
        return self.head(f), f


def flatten_features(x: jax.Array) -> jax.Array:
    """Flattens all but the batch axis."""
    return jnp.reshape(x, (x.shape[0], -1))
