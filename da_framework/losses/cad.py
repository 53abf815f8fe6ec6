"""CAD and CondCAD: contrastive domain bottlenecks that remove domain information from features.

Ruan, Dubois & Maddison, "Optimal Representations for Covariate Shift", ICLR 2022
(arXiv:2201.00057).  The variant is DomainBed's (``domainbed/algorithms.py``,
``AbstractCAD.bn_loss``, after Khosla et al.'s supervised contrastive loss) with its fixed
settings ``is_flipped=True``, ``is_normalized=False``, ``is_project=False``: on the pooled
features z of the K environments, with ``s_ij = z_i . z_j / T`` and ``j != i`` throughout,

* CAD (minimises I(D; Z)): ``log p_ij = s_ij - logsumexp_{k != i} s_ik`` and
  ``l_i = -(T / 0.07) logsumexp_{j: d_j != d_i} log p_ij``, over the rows i that have another
  example of the same label;
* CondCAD (minimises I(D; Z | Y)): ``log p_ij = s_ij - logsumexp_{k != i, y_k = y_i} s_ik`` and
  ``l_i = -(T / 0.07) logsumexp_{j: y_j = y_i, d_j != d_i} log p_ij``, over the rows that have
  a same-label example from another environment;

the loss is the mean of the finite ``l_i`` (0 when none), weighted by ``lmbda``.  Defaults
``lmbda = 0.1``, ``temperature = 0.1`` (DomainBed's ``hparams_registry.py``; search spaces
``{1e-4, ..., 1e2}`` and ``{0.05, 0.1}``).  Methods: ``"cross_entropy + cad"``,
``"cross_entropy + condcad"``; the term includes its weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_batch
from da_framework.losses.dg_common import labelled_views
from da_framework.losses.registry import LossError, LossInputs, register_loss

BASE_TEMPERATURE = 0.07


def masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Row-wise ``logsumexp`` of ``x`` over the entries where ``mask``; -inf for a row without any (finite gradients)."""
    has = jnp.any(mask, axis=1)
    safe = jnp.where(has[:, None], jnp.where(mask, x, -jnp.inf), 0.0)
    return jnp.where(has, jax.nn.logsumexp(safe, axis=1), -jnp.inf)


def cad_bottleneck(
    features: jax.Array, labels: jax.Array, domains: jax.Array, temperature: float = 0.1, conditional: bool = False
) -> jax.Array:
    """DomainBed's (Cond)CAD bottleneck loss of pooled features (module doc).

    Args:
      features: (n, d) features of all environments.
      labels: (n,) class labels.
      domains: (n,) environment ids.
      temperature: T of the similarities.
      conditional: CondCAD (True) or CAD (False).

    Returns:
      the scalar mean of the finite per-example losses, 0 when there is none.
    """
    check_batch(features, "cad")
    if not temperature > 0:
        raise LossError(f"cad: temperature must be > 0, got {temperature!r}")
    z = features.astype(jnp.float32)
    n = z.shape[0]
    not_self = ~jnp.eye(n, dtype=bool)
    same_y = (labels[:, None] == labels[None, :]) & not_self
    other_d = domains[:, None] != domains[None, :]
    sims = z @ z.T / temperature
    if conditional:
        pos = same_y & other_d
        valid = jnp.any(pos, axis=1)
        log_prob = sims - masked_logsumexp(sims, same_y)[:, None]
    else:
        pos = other_d
        valid = jnp.any(same_y, axis=1)
        log_prob = sims - masked_logsumexp(sims, not_self)[:, None]
    log_prob = jnp.where(valid[:, None], log_prob, 0.0)  # rows outside the mean: no inf - inf
    rows = -(temperature / BASE_TEMPERATURE) * masked_logsumexp(log_prob, pos)
    keep = valid & jnp.isfinite(rows)
    count = jnp.sum(keep)
    return jnp.where(count > 0, jnp.sum(jnp.where(keep, rows, 0.0)) / jnp.maximum(count, 1), 0.0)


def _pooled(inputs: LossInputs, loss: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    views = labelled_views(inputs, loss)
    z = jnp.concatenate([v.features for v in views])
    y = jnp.concatenate([v.labels for v in views])
    d = jnp.concatenate([jnp.full(v.features.shape[0], v.domain_id, jnp.int32) for v in views])
    return z, y, d


@register_loss(
    "cad",
    description="CAD: contrastive bottleneck removing environment information from features (DomainBed's CAD)",
    reference="Ruan, Dubois & Maddison, 'Optimal Representations for Covariate Shift', ICLR 2022; DomainBed's CAD",
)
def cad_term(inputs: LossInputs, lmbda: float = 0.1, temperature: float = 0.1) -> jax.Array:
    """``lmbda *`` the CAD bottleneck of the step's labelled environments."""
    return lmbda * cad_bottleneck(*_pooled(inputs, "cad"), temperature=temperature, conditional=False)


@register_loss(
    "condcad",
    description="CondCAD: CAD conditioned on the label, I(D; Z | Y) (DomainBed's CondCAD)",
    reference="Ruan, Dubois & Maddison, 'Optimal Representations for Covariate Shift', ICLR 2022; DomainBed's CondCAD",
)
def condcad_term(inputs: LossInputs, lmbda: float = 0.1, temperature: float = 0.1) -> jax.Array:
    """``lmbda *`` the CondCAD bottleneck of the step's labelled environments."""
    return lmbda * cad_bottleneck(*_pooled(inputs, "condcad"), temperature=temperature, conditional=True)
