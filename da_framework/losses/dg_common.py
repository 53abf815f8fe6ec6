"""What the domain-generalisation terms share: per-environment views, risks, DomainBed's anneal.

Every DG term reads the step's labelled environments through
:meth:`~da_framework.losses.registry.LossInputs.sources` (one
:class:`~da_framework.losses.registry.DomainView` per source domain: ``source="a,b,c"``
gives three, each ``batch_size`` examples, as DomainBed's one minibatch per training
environment).  A two-domain step has one view, so a DG term also runs on a plain run.

DomainBed (facebookresearch/DomainBed, ``domainbed/algorithms.py``) switches a penalty's
weight by step count, ``weight if update_count >= anneal_iters else before`` (IRM, VREx,
IB).  A stateless term sees only ``progress`` p = step / steps of the run, so
:func:`anneal_weight` takes ``t = round(p * steps_of)`` as DomainBed's ``update_count``,
with ``steps_of`` = 5001, DomainBed's ``N_STEPS`` for every dataset: in a 5001-step run
``t`` is the step count exactly; in a run of S steps the switch comes at the same fraction
``anneal_iters / 5001`` of training (step ``anneal_iters * S / 5001``), unless the method
sets ``steps_of=S`` to switch at step ``anneal_iters``.  DomainBed also re-creates its Adam
optimiser at the switch step; the terms ask the standard step for that by registering
``optimizer_reset=<anneal hyper-parameter>`` (:func:`da_framework.train.step.reset_fires`
counts steps the same way).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from da_framework.losses.classification import cross_entropy
from da_framework.losses.registry import DomainView, LossError, LossInputs

DOMAINBED_STEPS = 5001


def labelled_views(inputs: LossInputs, loss: str, min_examples: int = 1) -> tuple[DomainView, ...]:
    """The step's labelled environments, checked: labels present, at least ``min_examples`` each.

    Raises:
      LossError: naming the loss when a view lacks labels or is too small.
    """
    views = inputs.sources()
    for v in views:
        if v.labels is None:
            raise LossError(f"{loss}: source domain {v.domain_id} has no labels")
        if v.logits.shape[0] < min_examples:
            raise LossError(
                f"{loss}: needs at least {min_examples} examples per environment, domain {v.domain_id} has "
                f"{v.logits.shape[0]}; raise batch_size"
            )
    return views


def environment_risks(views: tuple[DomainView, ...]) -> jax.Array:
    """(K,) mean cross-entropy of each environment's logits (DomainBed's per-minibatch ``F.cross_entropy``)."""
    return jnp.stack([cross_entropy(v.logits, v.labels) for v in views])


def anneal_weight(
    progress: jax.Array, weight: float, anneal_iters: float, before: float, steps_of: float = DOMAINBED_STEPS
) -> jax.Array:
    """DomainBed's step switch ``weight if update_count >= anneal_iters else before`` (module doc).

    Args:
      progress: the step's fraction of training done, step / steps.
      weight: the weight from step ``anneal_iters`` on (e.g. ``irm_lambda``).
      anneal_iters: DomainBed's ``*_penalty_anneal_iters``.
      before: the weight before (1.0 for IRM and VREx, 0.0 for IB).
      steps_of: the run length ``anneal_iters`` counts in (DomainBed's 5001 by default).

    Returns:
      the scalar weight (float32).
    """
    if steps_of <= 0:
        raise LossError(f"anneal: steps_of must be > 0, got {steps_of!r}")
    t = jnp.round(jnp.asarray(progress, jnp.float32) * steps_of)
    return jnp.where(t >= anneal_iters, jnp.float32(weight), jnp.float32(before))


def mean_over_pairs(values: list[jax.Array]) -> jax.Array:
    """The mean of per-pair values, 0 when there is no pair (DomainBed: penalty / (K (K - 1) / 2), 0 for K = 1)."""
    return jnp.mean(jnp.stack(values)) if values else jnp.zeros((), jnp.float32)
