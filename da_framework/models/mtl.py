"""DomainBed's MTL featurizer: a featurizer's output concatenated with the batch's mean output.

Blanchard, Deshmukh, Dogan, Lee & Scott, "Domain Generalization by Marginal Transfer
Learning", JMLR 2021 (arXiv:1711.07910), in the neural form of facebookresearch/DomainBed
``domainbed/algorithms.py`` class ``MTL`` (commit 22002ea): the classifier reads
``[phi(x), mu]``, phi the featurizer and mu an embedding of x's domain, the mean of phi over
that domain's examples.  Registered as the backbone ``"mtl"`` (``model="mtl"``,
``model_kwargs={"featurizer": "mnist_cnn"}``); under :class:`~da_framework.models.classifier.Classifier`
its (N, 2d) output is the head's input, so the head is DomainBed's ``Classifier(2 * n_outputs)``.

The forward pass takes mu as the mean of phi over the whole batch it is given: that is
DomainBed's ``predict(x)`` at test time (``env=None``: the test batch's own mean), and so what
every evaluation here computes.  Training reads phi (the first d columns) and replaces mu by
the per-environment moving embedding of the ``mtl`` term (:mod:`da_framework.losses.mtl`).

Evaluation batches: DomainBed evaluates in batches of 64 (the last one smaller); here
``eval_batch_size`` sets the batch whose mean is mu, and :func:`~da_framework.train.evaluate.predict_split`
zero-pads a split's last batch to that size, so the padded rows' features enter that last
batch's mean (DomainBed's last batch averages its real examples only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.errors import UserError


def inner_backbone(kind: str, featurizer: str, featurizer_kwargs: Mapping[str, Any]) -> nn.Module:
    """The registered backbone ``featurizer`` built with ``featurizer_kwargs`` (the inner featurizer of ``kind``).

    Raises:
      UserError: for an unknown or wrapping featurizer name, or bad kwargs (one line).
    """
    from da_framework.models.registry import BACKBONES  # lazy: the registry imports this module

    if featurizer in ("mtl", "arm") or featurizer not in BACKBONES:
        valid = ", ".join(b for b in BACKBONES if b not in ("mtl", "arm"))
        raise UserError(f"{kind}: unknown featurizer {featurizer!r}; valid: {valid}")
    try:
        return BACKBONES[featurizer][0](**dict(featurizer_kwargs))
    except TypeError as e:
        raise UserError(f"{kind}: bad featurizer_kwargs for {featurizer!r}: {e}") from None


class MTLFeaturizer(nn.Module):
    """``[phi(x), mean over the batch of phi(x)]``: (N, 2d) from a registered featurizer phi.

    Attributes:
      featurizer: the registered backbone name of phi (DomainBed's SMALL_IMAGES: ``"mnist_cnn"``).
      featurizer_kwargs: its keyword arguments.
    """

    featurizer: str = "mnist_cnn"
    featurizer_kwargs: Mapping[str, Any] | None = None

    def setup(self) -> None:
        self.phi = inner_backbone("mtl", self.featurizer, self.featurizer_kwargs or {})

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps inputs (N, ...) to (N, 2d): phi(x) and the batch mean of phi(x) on every row."""
        phi = self.phi(x, train=train)
        if phi.ndim != 2:
            raise UserError(f"mtl: the featurizer must output (batch, d) vectors, got shape {tuple(phi.shape)}")
        return jnp.concatenate([phi, jnp.broadcast_to(jnp.mean(phi, 0, keepdims=True), phi.shape)], axis=-1)
