"""DomainBed's ARM-CML featurizer: a context network's per-support-group mean as an extra input channel.

Zhang, Marklund, Dhawan, Gupta, Levine & Finn, "Adaptive Risk Minimization: Learning to Adapt to
Domain Shift", NeurIPS 2021 (arXiv:2007.02931), the contextual meta-learning variant ARM-CML, in
the form of facebookresearch/DomainBed ``domainbed/algorithms.py`` class ``ARM`` and
``domainbed/networks.py`` ``ContextNet`` (commit 22002ea).  Registered as the backbone ``"arm"``
(``model="arm"``, ``model_kwargs={"featurizer": "mnist_cnn", "support_size": 64}``).  For images
x (N, H, W, C) split into N / s consecutive support groups of s = ``support_size`` examples:

    c = ContextNet(x)                        (N, H, W, 1): conv5x5(64)-BN-ReLU-conv5x5(64)-BN-ReLU-conv5x5(1)
    c_g = mean of c over the group g(i)      (every example gets its group's mean map)
    features = phi([x, c_g])                 (phi sees C + 1 channels; DomainBed's Featurizer of 1 + C)

The context network and phi are this backbone's parameters (``backbone/context_net``,
``backbone/phi``), so the model's own forward is DomainBed's ``ARM.predict``, in training and at
test time; BatchNorm uses batch statistics in training and running ones (torch's update,
:class:`~da_framework.models.batchnorm.BatchNorm`) in evaluation, as DomainBed's train / eval modes.

The constraint: every batch the model sees must be a whole number of support groups.  In training
DomainBed's support size is the per-environment batch size, so each environment's batch is one
group (the ``arm`` trainer checks ``support_size == batch_size``); in evaluation ``eval_batch_size``
must be a multiple of ``support_size`` (else a one-line error).  Differences from DomainBed: where a
batch does not split, DomainBed silently makes the whole batch one group (its evaluation batches of
64 with s = 64 split; its smaller last batch of a split becomes one group); here that is an error,
and a split's last evaluation batch is zero-padded (:func:`~da_framework.train.evaluate.predict_split`),
so padded rows join the context mean of the last group that holds real examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.errors import UserError
from da_framework.models.batchnorm import BatchNorm
from da_framework.models.mtl import inner_backbone


class ContextNet(nn.Module):
    """DomainBed's ``ContextNet``: three 5x5 'same' convolutions (``channels``, ``channels``, 1), BN + ReLU between.

    Attributes:
      channels: width of the two hidden convolutions (DomainBed: 64).
    """

    channels: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps images (N, H, W, C) to one context channel (N, H, W, 1)."""
        pad = ((2, 2), (2, 2))
        for _ in range(2):
            x = nn.Conv(self.channels, (5, 5), padding=pad)(x)
            x = nn.relu(BatchNorm(use_running_average=not train)(x))
        return nn.Conv(1, (5, 5), padding=pad)(x)


def group_mean(context: jax.Array, support_size: int) -> jax.Array:
    """Each example's support-group mean of ``context`` (N, ...): groups are consecutive runs of ``support_size``.

    Raises:
      UserError: when N is not a multiple of ``support_size`` (one line, naming both).
    """
    n = context.shape[0]
    if n % support_size:
        raise UserError(f"arm: a batch of {n} examples does not split into support groups of {support_size}; "
                        f"make batch_size == support_size and eval_batch_size a multiple of it")
    groups = context.reshape(n // support_size, support_size, *context.shape[1:]).mean(axis=1)
    return jnp.repeat(groups, support_size, axis=0)


class ARMFeaturizer(nn.Module):
    """``phi([x, group mean of ContextNet(x)])`` for images x (N, H, W, C).

    Attributes:
      featurizer: the registered backbone name of phi (DomainBed's SMALL_IMAGES: ``"mnist_cnn"``).
      featurizer_kwargs: its keyword arguments.
      support_size: examples per support group (DomainBed: the per-environment ``batch_size``, 64).
      context_channels: the context network's hidden width (DomainBed: 64).
    """

    featurizer: str = "mnist_cnn"
    featurizer_kwargs: Mapping[str, Any] | None = None
    support_size: int = 64
    context_channels: int = 64

    def setup(self) -> None:
        if isinstance(self.support_size, bool) or not isinstance(self.support_size, int) or self.support_size < 1:
            raise UserError(f"arm: support_size must be an integer >= 1, got {self.support_size!r}")
        self.context_net = ContextNet(self.context_channels)
        self.phi = inner_backbone("arm", self.featurizer, self.featurizer_kwargs or {})

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Features of images (N, H, W, C), N a multiple of ``support_size``."""
        if x.ndim != 4:
            raise UserError(f"arm: needs image batches (N, H, W, C), got shape {tuple(x.shape)}")
        context = group_mean(self.context_net(x, train=train), self.support_size)
        return self.phi(jnp.concatenate([x, context.astype(x.dtype)], axis=-1), train=train)
