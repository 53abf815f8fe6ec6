"""The model shape every adaptation method relies on: backbone -> bottleneck -> head.

``Classifier.__call__`` returns ``(logits, features)``: the features (bottleneck output, or
backbone output when there is no bottleneck) are what discrepancy and adversarial losses
align.  Parameters live under the names ``backbone``, ``bottleneck`` and ``head``, so weight
transfer, freezing and per-part learning rates can address them by path.

The head is one Dense layer by default; ``head_hidden=(1024, 1024)`` makes it tllib's MCD
``ImageClassifierHead`` (:class:`DeepHead`), still under the name ``head``, and
``head_weight_norm=True`` a weight-normalised linear layer (SHOT's hypothesis,
:class:`~da_framework.models.weight_norm.WeightNormDense`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.errors import UserError
from da_framework.models.batchnorm import BatchNorm
from da_framework.models.weight_norm import WeightNormDense

BOTTLENECK_NORMS = ("layer", "batch", "none")
HEAD_NORMS = ("batch", "none")


class Bottleneck(nn.Module):
    """Dense -> norm -> ReLU [-> dropout] projection of backbone features.

    ``norm="layer"`` (the default) is a LayerNorm; ``norm="batch"`` is tllib's bottleneck
    (``Linear -> BatchNorm1d -> ReLU``, its ``ImageClassifier``): a torch-style BatchNorm over
    the step's whole batch (source and target together) with running statistics in
    ``batch_stats``; ``"none"`` drops the norm.  ``relu=False`` drops the ReLU: with
    ``norm="batch", dropout=0.5`` it is SHOT's ``feat_bottleneck(type="bn")``
    (``Linear -> BatchNorm1d -> Dropout(0.5)``, tim-learn/SHOT ``digit/network.py``).
    """

    features: int
    dropout: float = 0.0
    norm: str = "layer"
    relu: bool = True

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
        if self.relu:
            x = nn.relu(x)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x


def check_head(hidden: tuple[int, ...], dropout: float, norm: str, where: str = "head") -> tuple[int, ...]:
    """Validates deep-head settings (:class:`DeepHead`) and returns ``hidden`` as a tuple of ints.

    Raises:
      UserError: one line naming the bad setting.
    """
    if isinstance(hidden, (int, str)) or not all(isinstance(w, int) and not isinstance(w, bool) for w in hidden):
        raise UserError(f"{where}_hidden must be a tuple of layer widths, e.g. (1024, 1024), got {hidden!r}")
    if any(w < 1 for w in hidden):
        raise UserError(f"{where}_hidden widths must be >= 1, got {tuple(hidden)!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"{where}_dropout must be in [0, 1), got {dropout!r}")
    if norm not in HEAD_NORMS:
        raise UserError(f"unknown {where}_norm {norm!r}; valid: {', '.join(HEAD_NORMS)}")
    return tuple(int(w) for w in hidden)


class DeepHead(nn.Module):
    """tllib's MCD classifier head (``tllib/alignment/mcd.py`` ``ImageClassifierHead``).

    For each width ``h`` of ``hidden``: Dropout(``dropout``) -> Dense(h) -> norm -> ReLU; then
    Dense(``num_classes``).  tllib's is ``hidden=(1024, 1024)``, ``dropout=0.5``,
    ``norm="batch"`` (BatchNorm1d); its optional pooling layer is not part of this head (the
    features here are already vectors, as with tllib's ``--no-pool``).  ``norm="batch"`` is
    :class:`~da_framework.models.batchnorm.BatchNorm` (torch's update of the running
    statistics, kept in ``batch_stats``); train mode normalises with the batch's statistics.
    Parameters: ``Dense_0 .. Dense_{len(hidden)}``, ``BatchNorm_0 ..``.  Differences from
    tllib: flax's LeCun-normal weights and zero biases (torch: uniform +-1/sqrt(fan_in)).
    """

    num_classes: int
    hidden: tuple[int, ...] = (1024, 1024)
    dropout: float = 0.5
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (batch, num_classes) of features ``x`` (batch, d); dropout needs the ``dropout`` rng in train mode."""
        for width in check_head(self.hidden, self.dropout, self.norm):
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = nn.Dense(width)(x)
            if self.norm == "batch":
                x = BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes)(x)


class Classifier(nn.Module):
    """A backbone, an optional bottleneck and a classifier head (linear by default).

    Attributes:
      backbone: a module mapping inputs to a (batch, d) feature vector; it must accept
        a ``train`` keyword.
      num_classes: number of output logits.
      bottleneck_dim: width of the bottleneck, or None for no bottleneck.
      bottleneck_norm: the bottleneck's normalisation (:class:`Bottleneck`).
      head_hidden: hidden widths of a deep head (:class:`DeepHead`, tllib's MCD head is
        ``(1024, 1024)``); ``()`` (the default) is the single Dense head, exactly as before
        these settings existed (same parameters, same numbers).
      head_dropout, head_norm: the deep head's dropout rate and norm (``"batch"`` or
        ``"none"``); read only when ``head_hidden`` is set.
      head_weight_norm: a weight-normalised linear head (SHOT's); not with ``head_hidden``.
      bottleneck_relu, bottleneck_dropout: the bottleneck's ReLU and dropout rate
        (:class:`Bottleneck`; SHOT's is ``bottleneck_norm="batch"``, no ReLU, dropout 0.5).
    """

    backbone: nn.Module
    num_classes: int
    bottleneck_dim: int | None = None
    bottleneck_norm: str = "layer"
    head_hidden: tuple[int, ...] = ()
    head_dropout: float = 0.5
    head_norm: str = "batch"
    head_weight_norm: bool = False
    bottleneck_relu: bool = True
    bottleneck_dropout: float = 0.0

    def setup(self) -> None:
        self.bottleneck = (Bottleneck(self.bottleneck_dim, dropout=self.bottleneck_dropout, norm=self.bottleneck_norm,
                                      relu=self.bottleneck_relu) if self.bottleneck_dim else None)
        if self.head_hidden and self.head_weight_norm:
            raise UserError("head_weight_norm is a linear head; drop head_hidden or head_weight_norm")
        if self.head_weight_norm:
            self.head = WeightNormDense(self.num_classes)
        elif self.head_hidden:
            hidden = check_head(self.head_hidden, self.head_dropout, self.head_norm)
            self.head = DeepHead(self.num_classes, hidden, self.head_dropout, self.head_norm)
        else:
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
        return (self.head(f, train=train) if self.head_hidden else self.head(f)), f


def flatten_features(x: jax.Array) -> jax.Array:
    """Flattens all but the batch axis."""
    return jnp.reshape(x, (x.shape[0], -1))
