"""SelfReg: self-supervised contrastive regularisation between same-class examples.

Kim, Yoo, Park, Kim & Lee, "SelfReg: Self-supervised Contrastive Regularization for Domain
Generalization", ICCV 2021.  The variant is DomainBed's (facebookresearch/DomainBed,
``domainbed/algorithms.py``, class ``SelfReg``; read at commit 22002ea).  Over the pooled
batch of all training environments, with features z (what the classifier reads), logits o,
the projection ``p = cdpl(z)`` and labels y:

1. two independent random permutations pi_1, pi_2 that only exchange examples of the same
   class (DomainBed sorts the batch by label and ``randperm``s each class block);
2. one draw ``lam ~ Beta(0.5, 0.5)`` per step;
3. ``o2 = o[pi_1]``, ``p2 = p[pi_1]`` and the mixed partners
   ``o3 = lam o[pi_1] + (1 - lam) o[pi_2]``, ``p3 = lam p[pi_1] + (1 - lam) p[pi_2]``;
4. with ``MSE`` the mean over all entries (``nn.MSELoss``)::

       L_ind = MSE(o, o2) + 0.3 MSE(z, p2),   L_hdl = MSE(o, o3) + 0.3 MSE(z, p3),
       regulariser = C (lam L_ind + (1 - lam) L_hdl),   C = min(CE(o, y), 1) without gradient.

   Gradients reach both sides of every pair (nothing else is detached), as in DomainBed.

The projection ``cdpl`` is DomainBed's: ``Linear(d, h) -> BatchNorm1d -> ReLU -> Linear(h, h)
-> BatchNorm1d -> ReLU -> Linear(h, d) -> BatchNorm1d`` with ``h = d`` when d = 2048 and
``h = 2 d`` otherwise, torch's default initialisation (weights and biases ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))``, batch-norm scale 1 and shift 0) and batch statistics of the pooled batch
(biased variance, eps 1e-5), which is what a torch ``BatchNorm1d`` in training mode computes.
DomainBed builds ``cdpl`` after ``ERM.__init__`` has created the Adam over the featurizer and
classifier only, so its ``cdpl`` is never updated: it stays a fixed random projection.  The
term reproduces that by default (``train_projection=False``: the projection lives in
``TermState.state``); ``train_projection=True`` makes it ``TermState.params``, trained with
the model, which is what the paper describes.

DomainBed has no SelfReg hyper-parameters (the 0.3, the Beta(0.5, 0.5) and the
``min(CE, 1)`` scale are constants of its code) and no schedule by training progress: the only
schedule is ``C = min(CE, 1)``, which follows the loss.  Randomness (both permutations and
``lam``) comes from ``inputs.key``.  Known differences: DomainBed's permutations come from
torch's global generator and ``lam`` from NumPy's, so draws differ from a DomainBed run;
torch's batch norm also keeps running statistics, which nothing reads (``cdpl`` is used only
in training), so they are not kept.

Method: ``"cross_entropy + selfreg"`` (DomainBed's ``cl_loss`` is the cross-entropy over the
pooled batch); leave its method weight at 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_batch
from da_framework.losses.classification import cross_entropy
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

FEATURE_WEIGHT = 0.3  # DomainBed's weight of the feature terms
BETA = 0.5  # DomainBed's lam ~ Beta(0.5, 0.5)
BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default


def _torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class ProjectionHead(nn.Module):
    """DomainBed's ``cdpl``: three torch-initialised Linear layers, each followed by a training-mode
    batch norm over the batch (ReLU after the first two)."""

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Projects (n, d) features to (n, out)."""
        for i, width in enumerate((self.hidden, self.hidden, self.out)):
            fan_in = x.shape[-1]
            x = nn.Dense(width, kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in), name=f"linear{i}")(x)
            mean = jnp.mean(x, axis=0, keepdims=True)
            var = jnp.mean((x - mean) ** 2, axis=0, keepdims=True)
            scale = self.param(f"bn{i}_scale", nn.initializers.ones, (width,))
            shift = self.param(f"bn{i}_bias", nn.initializers.zeros, (width,))
            x = (x - mean) / jnp.sqrt(var + BN_EPS) * scale + shift
            if i < 2:
                x = nn.relu(x)
        return x


def projection_width(d: int) -> int:
    """DomainBed's hidden width of ``cdpl``: d for d = 2048 (ResNet-50), 2 d otherwise."""
    return d if d == 2048 else 2 * d


def within_class_permutation(key: jax.Array, labels: jax.Array) -> jax.Array:
    """(n,) a uniformly random permutation that maps every example to one of the same label.

    Sorting by label with two independent random tie-breaks lists each class's examples in two
    random orders; matching the two lists position by position pairs each example with a
    uniformly random same-class partner, without replacement (DomainBed's per-class ``randperm``).
    """
    n = labels.shape[0]
    k1, k2 = jax.random.split(key)
    first = jnp.lexsort((jax.random.uniform(k1, (n,)), labels))
    second = jnp.lexsort((jax.random.uniform(k2, (n,)), labels))
    return jnp.zeros((n,), jnp.int32).at[first].set(second.astype(jnp.int32))


def selfreg_draws(key: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The step's randomness from its key: ``(pi_1, pi_2, lam)``, lam ~ Beta(0.5, 0.5)."""
    k1, k2, k3 = jax.random.split(key, 3)
    lam = jax.random.beta(k3, BETA, BETA, dtype=jnp.float32)
    return within_class_permutation(k1, labels), within_class_permutation(k2, labels), lam


def selfreg_penalty(
    features: jax.Array, projected: jax.Array, logits: jax.Array, perm1: jax.Array, perm2: jax.Array, lam: jax.Array
) -> jax.Array:
    """``lam L_ind + (1 - lam) L_hdl`` of the module doc (before the ``min(CE, 1)`` scale).

    Args:
      features: (n, d) classifier inputs z.
      projected: (n, d) ``cdpl(z)``.
      logits: (n, k) logits.
      perm1, perm2: (n,) same-class permutations.
      lam: the mixing weight in [0, 1].
    """
    mse = lambda a, b: jnp.mean((a - b) ** 2)
    logits2, proj2 = logits[perm1], projected[perm1]
    logits3 = lam * logits2 + (1.0 - lam) * logits[perm2]
    proj3 = lam * proj2 + (1.0 - lam) * projected[perm2]
    ind = mse(logits, logits2) + FEATURE_WEIGHT * mse(features, proj2)
    hdl = mse(logits, logits3) + FEATURE_WEIGHT * mse(features, proj3)
    return lam * ind + (1.0 - lam) * hdl


@register_stateful_loss(
    "selfreg",
    description="SelfReg: same-class logit and projected-feature regression with a mixup partner (DomainBed's SelfReg)",
    reference="Kim et al., 'SelfReg: Self-supervised Contrastive Regularization for Domain Generalization', ICCV 2021; "
              "DomainBed's SelfReg",
)
def selfreg_term(train_projection: bool = False) -> StatefulTerm:
    """DomainBed's SelfReg regulariser (module doc); ``train_projection`` trains ``cdpl`` (DomainBed: frozen)."""
    if not isinstance(train_projection, bool):
        raise LossError(f"selfreg: train_projection must be True or False, got {train_projection!r}")

    def batch(inputs: LossInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
        z, o, y = inputs.source_features, inputs.source_logits, inputs.source_labels
        check_batch(z, "selfreg")
        if o.ndim != 2 or y.shape != o.shape[:1] or z.shape[0] != o.shape[0]:
            raise LossError(f"selfreg: features {z.shape}, logits {o.shape} and labels {y.shape} do not match")
        return z.astype(jnp.float32), o.astype(jnp.float32), y

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        z, _, _ = batch(inputs)
        d = z.shape[1]
        head = ProjectionHead(projection_width(d), d)
        params = head.init(key, z)["params"]
        return TermState(params=params) if train_projection else TermState(state=params)

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        z, o, y = batch(inputs)
        d = z.shape[1]
        head_params = term_state.params if train_projection else term_state.state
        projected = ProjectionHead(projection_width(d), d).apply({"params": head_params}, z)
        perm1, perm2, lam = selfreg_draws(inputs.key, y)
        scale = jnp.minimum(jax.lax.stop_gradient(cross_entropy(o, y)), 1.0)
        penalty = selfreg_penalty(z, projected, o, perm1, perm2, lam)
        return scale * penalty, term_state.state, {"lam": lam, "scale": scale}

    return StatefulTerm(init, apply)
