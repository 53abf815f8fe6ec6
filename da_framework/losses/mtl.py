"""MTL's objective with per-environment moving embeddings: the ``mtl`` term (standard trainer).

Blanchard, Deshmukh, Dogan, Lee & Scott, "Domain Generalization by Marginal Transfer
Learning", JMLR 2021 (arXiv:1711.07910), as facebookresearch/DomainBed ``domainbed/algorithms.py``
class ``MTL`` computes it (commit 22002ea; ``hparams_registry.py``: ``mtl_ema`` default 0.99,
search ``choice([0.5, 0.9, 0.99, 1.])``).  It needs the MTL model (:mod:`da_framework.models.mtl`,
``model="mtl"``), whose head reads ``[phi(x), mu]``.  With E_e the term's state, one embedding
per training environment e (zeros at the start), each step:

    mu_e  = mtl_ema * mean_i phi(x_ei) + (1 - mtl_ema) * E_e          (gradient flows into the mean)
    loss  = sum_e CE(head([phi(x_e), mu_e]), y_e)                     (a sum over environments, as DomainBed)
    E_e  <- stop_gradient(mu_e)

so ``mtl_ema`` weighs the *current* batch (DomainBed's convention; 1 keeps no memory).  The
state is explicit, ``train_state.term_states["mtl"]`` of shape (K, d).  At test time the
model's own forward uses the evaluated batch's mean (DomainBed's ``predict(x)``); E is not read.

Differences from DomainBed: its ``predict`` ends ``update_embeddings_(...).normal_()``, which
overwrites the embedding in place with N(0, 1) noise (DomainBed issue #159, open), so DomainBed's
code trains and tests its classifier on ``[phi(x), noise]`` and never uses the embeddings; this
term implements the embedding that code computes and the paper describes.  The standard step
forwards the test environment's batch with the sources (compute only; this term reads the
source views' phi, and MNIST_CNN has no batch statistics).  The head must be one linear layer
(DomainBed's ``nonlinear_classifier=False``) and the model has no bottleneck.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from da_framework.losses.classification import cross_entropy
from da_framework.losses.dg_common import labelled_views
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss


def check_mtl_ema(value: Any) -> float:
    """``mtl_ema`` as a float when it is a number in [0, 1] (not a bool), else a one-line LossError."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not math.isfinite(value) or not 0 <= value <= 1:
        raise LossError(f"mtl: mtl_ema must be a number in [0, 1], got {value!r}")
    return float(value)


def mtl_head_and_width(inputs: LossInputs) -> tuple[Any, int]:
    """The model's linear head params and d (phi's width), after checking that the model is the MTL model.

    Raises:
      LossError: one line, when the model is not ``model="mtl"`` with a linear head and no bottleneck.
    """
    params = inputs.params
    ok = (isinstance(params, dict) or hasattr(params, "keys")) and "backbone" in params and "phi" in params["backbone"]
    if not ok or "bottleneck" in params or set(params.get("head", {})) != {"kernel", "bias"}:
        raise LossError("mtl: needs the MTL model with a linear head and no bottleneck: set model='mtl', "
                        "model_kwargs={'featurizer': 'mnist_cnn'}, bottleneck_dim=None")
    width = inputs.source_features.shape[-1]
    if width % 2 or params["head"]["kernel"].shape[0] != width:
        raise LossError(f"mtl: the head must read [phi, mu] of width 2d, got features of width {width}")
    return params["head"], width // 2


def mtl_logits(head: Any, phi: jax.Array, mu: jax.Array) -> jax.Array:
    """The linear head on ``[phi, mu]``: ``phi`` (n, d), ``mu`` (d,) broadcast to every row."""
    joined = jnp.concatenate([phi, jnp.broadcast_to(mu, phi.shape)], axis=-1)
    return joined @ head["kernel"] + head["bias"]


@register_stateful_loss(
    "mtl",
    description="MTL: classifier on [features, per-environment moving mean embedding] (DomainBed; model='mtl')",
    reference="Blanchard, Deshmukh, Dogan, Lee & Scott, 'Domain Generalization by Marginal Transfer Learning', "
    "JMLR 2021 (arXiv:1711.07910)",
)
def mtl(mtl_ema: float = 0.99) -> StatefulTerm:
    """DomainBed's MTL objective (module doc); ``mtl_ema`` in [0, 1] weighs the current batch's mean."""
    ema = check_mtl_ema(mtl_ema)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        del key
        _, d = mtl_head_and_width(inputs)
        return TermState(state=jnp.zeros((len(inputs.sources()), d), jnp.float32))

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        head, d = mtl_head_and_width(inputs)
        views, memory = labelled_views(inputs, "mtl"), term_state.state
        if len(views) != memory.shape[0]:
            raise LossError(f"mtl: the state holds {memory.shape[0]} environment embeddings, the step has {len(views)}")
        total, new = jnp.zeros((), jnp.float32), []
        for e, view in enumerate(views):
            phi = view.features[:, :d]
            mu = ema * jnp.mean(phi, 0) + (1 - ema) * memory[e]
            total = total + cross_entropy(mtl_logits(head, phi, mu), view.labels)
            new.append(jax.lax.stop_gradient(mu))
        new_memory = jnp.stack(new)
        return total, new_memory, {"embedding_norm": jnp.mean(jnp.linalg.norm(new_memory, axis=-1))}

    return StatefulTerm(init, apply)
