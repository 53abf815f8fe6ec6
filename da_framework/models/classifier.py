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

from da_framework.errors import UserError
from da_framework.models.batchnorm import BatchNorm


BOTTLENECK_NORMS = ("layer", "batch", "none")


class Bottleneck(nn.Module):
    """Dense -> norm -> ReLU projection of backbone features.

    ``norm="layer"`` (the default) is a LayerNorm; ``norm="batch"`` is tllib's bottleneck
    (``Linear -> BatchNorm1d -> ReLU``, its ``ImageClassifier``): a torch-style BatchNorm over
    the step's whole batch (source and target together) with running statistics in
    ``batch_stats``; ``"none"`` drops the norm.
    """

    features: int
    dropout: float = 0.0
    norm: str = "layer"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Projects ``x`` of shape (batch, d) to (batch, features)."""
        x = nn.Dense(self.features)(x)
        if self.norm == "layer":
            x = nn.LayerNorm()(x)
        elif self.norm == "batch":
            x = BatchNorm(use_running_average=not train)(x)
        elif self.norm != "none":
            raise UserError(f"unknown bottleneck norm {self.norm!r}; valid: {', '.join(BOTTLENECK_NORMS)}")
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
      bottleneck_norm: the bottleneck's normalisation (:class:`Bottleneck`).
    """

    backbone: nn.Module
    num_classes: int
    bottleneck_dim: int | None = None
    bottleneck_norm: str = "layer"

    def setup(self) -> None:
        self.bottleneck = Bottleneck(self.bottleneck_dim, norm=self.bottleneck_norm) if self.bottleneck_dim else None
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
