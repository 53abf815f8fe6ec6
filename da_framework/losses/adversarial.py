"""Gradient reversal and the domain-adversarial loss (DANN).

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016.

A domain discriminator D is trained to tell source (label 1) from target (label 0)
features, through a gradient reversal layer R_lambda (identity forward, -lambda times the
gradient backward), so that minimising one loss trains D to separate the domains and the
feature extractor to confuse it:

    L_adv = BCE(D(R_lambda(f_s)), 1) + BCE(D(R_lambda(f_t)), 0)   (mean over each domain, /2)

lambda follows the DANN ramp  lambda(p) = 2 / (1 + exp(-10 p)) - 1  over training progress p.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from da_framework.losses.checks import check_feature_pair
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss


@partial(jax.custom_vjp, nondiff_argnums=())
def gradient_reversal(x: jax.Array, coeff: jax.Array | float = 1.0) -> jax.Array:
    """Identity in the forward pass; multiplies the incoming gradient by ``-coeff``.

    Args:
      x: any array.
      coeff: the reversal strength lambda >= 0 (receives no gradient).

    Returns:
      ``x`` unchanged.
    """
    del coeff
    return x


def _grl_fwd(x: jax.Array, coeff: jax.Array | float) -> tuple[jax.Array, jax.Array]:
    return x, jnp.asarray(coeff, dtype=jnp.float32)


def _grl_bwd(coeff: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    return (-coeff * g).astype(g.dtype), jnp.zeros_like(coeff)


gradient_reversal.defvjp(_grl_fwd, _grl_bwd)


def dann_ramp(progress: jax.Array | float, gamma: float = 10.0) -> jax.Array:
    """The DANN schedule 2 / (1 + exp(-gamma p)) - 1: 0 at p = 0, close to 1 at p = 1."""
    return 2.0 / (1.0 + jnp.exp(-gamma * jnp.asarray(progress, jnp.float32))) - 1.0


def discriminator_width(value: Any, loss: str) -> int:
    """``value`` if it is an integer >= 1 (a discriminator's hidden width), else a one-line LossError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LossError(f"{loss}: hidden_size must be an integer >= 1, got {value!r}")
    return value


def checked_flag(value: Any, loss: str, name: str) -> bool:
    """``value`` if it is True or False, else a one-line LossError."""
    if not isinstance(value, bool):
        raise LossError(f"{loss}: {name} must be True or False, got {value!r}")
    return value


def domain_adversarial_loss(source_domain_logits: jax.Array, target_domain_logits: jax.Array) -> jax.Array:
    """Binary cross-entropy of a domain classifier: source is class 1, target class 0.

    Args:
      source_domain_logits: (n_s,) or (n_s, 1) discriminator logits on source features.
      target_domain_logits: (n_t,) or (n_t, 1) discriminator logits on target features.

    Returns:
      the mean of the two domains' mean BCE losses (each domain weighs the same).
    """
    s = jnp.reshape(source_domain_logits, (-1,)).astype(jnp.float32)
    t = jnp.reshape(target_domain_logits, (-1,)).astype(jnp.float32)
    if s.shape[0] == 0 or t.shape[0] == 0:
        raise LossError("domain_adversarial_loss: empty batch")
    loss_s = jnp.mean(optax.sigmoid_binary_cross_entropy(s, jnp.ones_like(s)))
    loss_t = jnp.mean(optax.sigmoid_binary_cross_entropy(t, jnp.zeros_like(t)))
    return 0.5 * (loss_s + loss_t)


class BatchStatNorm(nn.Module):
    """Batch normalisation by the batch's own statistics, with a learnt scale and bias.

    What PyTorch's ``BatchNorm1d`` computes in training mode: ``(x - mean) / sqrt(var + eps)``
    over the batch axis, ``var`` the biased variance, then ``scale * . + bias``.  No running
    averages are kept: a discriminator is only ever run in training mode.
    """

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises (n, d) features over the n axis."""
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        mean = jnp.mean(x, axis=0)
        var = jnp.mean(jnp.square(x - mean), axis=0)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class DomainDiscriminator(nn.Module):
    """MLP domain classifier: Dense -> ReLU blocks -> one logit (DANN's D).

    ``batch_norm``: Dense -> BatchNorm -> ReLU blocks, tllib's ``DomainDiscriminator`` layout
    (``batch_norm=True``, its default), with the batch's statistics (:class:`BatchStatNorm`).
    """

    hidden: Sequence[int] = (256, 256)
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps features (n, d) to domain logits (n,)."""
        for width in self.hidden:
            x = nn.Dense(width)(x)
            x = nn.relu(BatchStatNorm()(x) if self.batch_norm else x)
        return nn.Dense(1)(x)[:, 0]


@register_stateful_loss(
    "dann",
    description="domain-adversarial loss through gradient reversal, DANN ramp on lambda",
    reference="Ganin et al., 'Domain-Adversarial Training of Neural Networks', JMLR 2016",
)
def dann_term(gamma: float = 10.0, max_coeff: float = 1.0, hidden_size: int = 256,
              disc_batch_norm: bool = False) -> StatefulTerm:
    """DANN: the discriminator (the term's parameters) on gradient-reversed source and target features.

    The reversal coefficient follows DANN's ramp ``max_coeff * (2 / (1 + exp(-gamma p)) - 1)``.
    ``hidden_size`` is the width of D's two hidden layers; ``disc_batch_norm`` puts a batch
    normalisation after each (tllib's D: ``hidden_size=1024, disc_batch_norm=True``).
    """
    discriminator = DomainDiscriminator((discriminator_width(hidden_size, "dann"),) * 2,
                                        checked_flag(disc_batch_norm, "dann", "disc_batch_norm"))

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        return TermState(params=discriminator.init(key, inputs.source_features)["params"])

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        check_feature_pair(inputs.source_features, inputs.target_features, "dann")
        coeff = max_coeff * dann_ramp(inputs.progress, gamma)
        n_s = inputs.source_features.shape[0]
        feats = gradient_reversal(jnp.concatenate([inputs.source_features, inputs.target_features]), coeff)
        logits = discriminator.apply({"params": term_state.params}, feats)
        return domain_adversarial_loss(logits[:n_s], logits[n_s:]), term_state.state, {}

    return StatefulTerm(init, apply)
