"""A compact single-stage, anchor-free centre-point detector in Flax.

The architecture and loss are those of Zhou, Wang & Kraehenbuehl, "Objects as Points",
arXiv:1904.07850, 2019 (CenterNet), reduced to CPU size: a backbone from the model zoo
returning its last feature map (``ResNet(pool=False)``; for ``resnet8`` on 64x64 inputs a
16x16 map of stride 4) and three small heads (3x3 conv -> ReLU -> 1x1 conv) predicting

* ``heatmap``: per-class centre logits ``(B, G, G, C)`` (bias initialised to
  -log((1 - 0.1) / 0.1), the focal-loss prior of Lin et al., ICCV 2017);
* ``offset``: sub-cell (y, x) offset of the centre ``(B, G, G, 2)``;
* ``log_size``: log (height, width) of the box in cells ``(B, G, G, 2)``.

Losses (:func:`detection_loss`): the penalty-reduced pixel-wise focal loss of CornerNet
(Law & Deng, ECCV 2018, eq. 1; alpha = 2, beta = 4) on the heatmap, normalised by the
number of objects, plus L1 losses on offset and log-size at the object centres
(CenterNet eq. 2-3; log-size instead of raw size, so weight 1 instead of 0.1).

The model also returns the globally average-pooled backbone features (``(B, D)``): the
features a domain-alignment loss compares between source and target images.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.detection.boxes import CenterTargets, Detections, decode_centers, encode_centers
from da_framework.errors import UserError
from da_framework.models.resnet import ResNet

PRIOR_BIAS = -math.log((1 - 0.1) / 0.1)


class DetectorError(UserError):
    """Raised for an unknown detector backbone or bad detector arguments."""


class HeadOutputs(NamedTuple):
    """Raw outputs of the centre-point heads (see module doc)."""

    heatmap: jax.Array
    offset: jax.Array
    log_size: jax.Array


class CenterPointDetector(nn.Module):
    """Backbone feature map -> centre-point heads.

    Attributes:
      backbone: a module mapping images (B, H, W, 3) to a feature map (B, G, G, D); it
        must accept a ``train`` keyword.
      num_classes: number of object classes C.
      head_channels: width of the heads' hidden 3x3 convolution.
    """

    backbone: nn.Module
    num_classes: int
    head_channels: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[HeadOutputs, jax.Array]:
        """Returns ``(HeadOutputs, pooled backbone features (B, D))`` for images ``x``."""
        fmap = self.backbone(x, train=train)
        if fmap.ndim != 4:
            raise DetectorError(
                f"the detector backbone must return a (B, G, G, D) feature map, got shape {fmap.shape}; "
                "use ResNet(pool=False)"
            )

        def branch(out: int, name: str, bias: float = 0.0) -> jax.Array:
            y = nn.relu(nn.Conv(self.head_channels, (3, 3), padding="SAME", name=f"{name}_hidden")(fmap))
            return nn.Conv(out, (1, 1), bias_init=nn.initializers.constant(bias), name=f"{name}_out")(y)

        outputs = HeadOutputs(
            heatmap=branch(self.num_classes, "heatmap", PRIOR_BIAS),
            offset=branch(2, "offset"),
            log_size=branch(2, "size"),
        )
        return outputs, jnp.mean(fmap, axis=(1, 2))


BACKBONES = {
    "resnet8": dict(stage_sizes=(1, 1, 1), width=16),
    "resnet20": dict(stage_sizes=(3, 3, 3), width=16),
}


def make_detector(
    backbone: str = "resnet8", num_classes: int = 1, head_channels: int = 64, **backbone_kwargs: Any
) -> CenterPointDetector:
    """A :class:`CenterPointDetector` on a zoo ResNet returning its feature map.

    The backbone is :class:`~da_framework.models.resnet.ResNet` with ``pool=False`` and
    GroupNorm by default (no mutable batch statistics, so the train step is a pure
    function of parameters); ``backbone_kwargs`` override its attributes.

    Raises:
      DetectorError: for an unknown backbone name or bad arguments.
    """
    if backbone not in BACKBONES:
        raise DetectorError(f"unknown detector backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    kwargs = {**BACKBONES[backbone], "norm": "group", **backbone_kwargs, "pool": False}
    try:
        net = ResNet(**kwargs)
    except TypeError as e:
        raise DetectorError(f"bad arguments for detector backbone {backbone!r}: {e}") from None
    return CenterPointDetector(backbone=net, num_classes=num_classes, head_channels=head_channels)


def encode_batch(
    boxes: jax.Array, labels: jax.Array, box_mask: jax.Array, grid_size: int, num_classes: int
) -> CenterTargets:
    """:func:`~da_framework.detection.boxes.encode_centers` over a batch (B, n, ...)."""
    return jax.vmap(lambda b, l, m: encode_centers(b, l, m, grid_size, num_classes))(boxes, labels, box_mask)


def focal_loss(logits: jax.Array, target: jax.Array, alpha: float = 2.0, beta: float = 4.0) -> jax.Array:
    """CornerNet's penalty-reduced focal loss, summed over cells (Law & Deng 2018, eq. 1).

    ``-(1 - p)^alpha log p`` at cells where ``target == 1`` and
    ``-(1 - y)^beta p^alpha log(1 - p)`` elsewhere, with ``p = sigmoid(logits)``; the sum
    is divided by the caller.
    """
    p = jax.nn.sigmoid(logits)
    log_p, log_1mp = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    pos = target >= 1.0
    pos_term = (1 - p) ** alpha * log_p
    neg_term = (1 - target) ** beta * p**alpha * log_1mp
    return -jnp.sum(jnp.where(pos, pos_term, neg_term))


def detection_loss(
    outputs: HeadOutputs, targets: CenterTargets, offset_weight: float = 1.0, size_weight: float = 1.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CenterNet loss of a batch: focal + offset L1 + log-size L1, per object.

    Returns:
      ``(total, {"heatmap": ..., "offset": ..., "size": ...})``.
    """
    num = jnp.maximum(jnp.sum(targets.mask), 1.0)
    heat = focal_loss(outputs.heatmap.astype(jnp.float32), targets.heatmap) / num
    m = targets.mask[..., None]
    off = jnp.sum(m * jnp.abs(outputs.offset - targets.offset)) / num
    size = jnp.sum(m * jnp.abs(outputs.log_size - targets.log_size)) / num
    total = heat + offset_weight * off + size_weight * size
    return total, {"heatmap": heat, "offset": off, "size": size}


def decode_batch(outputs: HeadOutputs, top_k: int = 20) -> Detections:
    """:func:`~da_framework.detection.boxes.decode_centers` over a batch."""
    return jax.vmap(lambda h, o, s: decode_centers(h, o, s, top_k))(outputs.heatmap, outputs.offset, outputs.log_size)
