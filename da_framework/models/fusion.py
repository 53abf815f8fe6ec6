"""Late fusion of two modalities (image + text) with separately transferable encoders.

``LateFusionClassifier(image_encoder, text_encoder, num_classes)`` encodes ``inputs["image"]``
and ``inputs["text"]`` independently (parameters under ``image_encoder`` and
``text_encoder``) and fuses late:

* ``fusion="features"``: concatenated features -> optional ``fusion`` bottleneck -> ``head``;
* ``fusion="logits"``: one head per modality (``image_head``, ``text_head``), logits averaged
  (decision-level fusion).

Each encoder can be initialised from a different trained single-modality classifier, e.g.
``transfer_params(lenet_params, params, rename={"backbone/": "image_encoder/"},
include=r"^image_encoder/")`` leaves ``text_encoder`` untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.errors import UserError
from da_framework.models.classifier import Bottleneck


class LateFusionClassifier(nn.Module):
    """Two encoders fused after encoding.

    Attributes:
      image_encoder: module mapping images to (batch, d_i) features.
      text_encoder: module mapping token ids to (batch, d_t) features.
      num_classes: output logits.
      fusion: ``"features"`` or ``"logits"``.
      fusion_dim: width of the bottleneck after concatenation (``"features"`` only), or None.
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    num_classes: int
    fusion: str = "features"
    fusion_dim: int | None = None

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Returns ``(logits, fused features)`` for ``{"image": ..., "text": ...}``."""
        if self.fusion not in ("features", "logits"):
            raise UserError(f"unknown fusion {self.fusion!r}; valid: features, logits")
        missing = {"image", "text"} - set(inputs)
        if missing:
            raise UserError(f"LateFusionClassifier inputs need keys 'image' and 'text'; missing {sorted(missing)}")
        fi = self.image_encoder(inputs["image"], train=train)
        ft = self.text_encoder(inputs["text"], train=train)
        f = jnp.concatenate([fi, ft], axis=-1)
        if self.fusion == "logits":
            return (nn.Dense(self.num_classes, name="image_head")(fi) + nn.Dense(self.num_classes, name="text_head")(ft)) / 2.0, f
        if self.fusion_dim:
            f = Bottleneck(self.fusion_dim, name="fusion")(f, train=train)
        return nn.Dense(self.num_classes, name="head")(f), f
