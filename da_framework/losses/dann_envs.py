"""DANN and CDANN over K training environments (domain generalisation), DomainBed's form.

Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016 (DANN), and Li et
al., "Deep Domain Generalization via Conditional Invariant Adversarial Networks", ECCV 2018
(CDANN), as DomainBed implements them (``domainbed/algorithms.py``, ``AbstractDANN``, at
commit 7df6f06 of the published tables): a K-way discriminator D (DomainBed's ``MLP``: depth
``mlp_depth`` linear layers of width ``mlp_width`` with ReLU between) predicts which training
environment each feature z came from,

    L_disc = mean_i CE(D(z_i), env_i)                                  (DANN)
    L_disc = sum_i w_i CE(D(z_i + E[y_i]), env_i),  w_i = 1 / (c[y_i] * C)   (CDANN)

with E a learned class embedding (``nn.Embedding(num_classes, d)``), c[y] the count of class
y in the step's batch and C = max(y) + 1 (``F.one_hot(all_y).sum(0)`` has that width).  D
(and E) minimise L_disc; the featurizer minimises ``CE - lambda * L_disc``.

Variant implemented: one step through a gradient reversal layer of coefficient ``dann_lambda``
on z, so D and E get +grad L_disc and the featurizer -lambda grad L_disc *in the same update*,
with the project's optimiser.  DomainBed alternates instead (``d_steps_per_g_step`` = 1: the
1st, 3rd, ... updates train featurizer and classifier alone, the 2nd, 4th, ... D and E alone,
each with its own Adam, betas (0.5, 0.9)), so its classifier sees half the updates; that form
is :mod:`da_framework.losses.dann_alternating` (``dann_alt``, ``cdann_alt``).  Here
``grad_penalty`` (default 0) and ``mlp_dropout`` (default 0) are not implemented.  Targets (the held-out environment) are
never read.  The method is ``cross_entropy + dann_envs`` / ``cross_entropy + cdann_envs``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from da_framework.losses.adversarial import gradient_reversal
from da_framework.losses.checks import check_positive
from da_framework.losses.dg_common import labelled_views
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss


class EnvironmentDiscriminator(nn.Module):
    """DomainBed's ``MLP``: ``depth`` Dense layers (``width`` wide, ReLU between) -> ``num_envs`` logits."""

    num_envs: int
    width: int = 256
    depth: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps features (n, d) to environment logits (n, num_envs)."""
        for _ in range(self.depth - 1):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.num_envs)(x)


def class_balance_weights(labels: jax.Array, num_classes: int) -> jax.Array:
    """CDANN's per-example weights ``1 / (count[y_i] * (max(y) + 1))`` (they sum to the classes present / C)."""
    counts = jnp.zeros((num_classes,), jnp.float32).at[labels].add(1.0)
    n_classes = (jnp.max(labels) + 1).astype(jnp.float32)
    return 1.0 / (counts[labels] * n_classes)


def environment_adversarial_loss(env_logits: jax.Array, env_labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """The discriminator's cross-entropy: the mean over examples, or ``sum_i w_i CE_i`` with ``weights``."""
    ce = optax.softmax_cross_entropy_with_integer_labels(env_logits.astype(jnp.float32), env_labels)
    return jnp.mean(ce) if weights is None else jnp.sum(weights * ce)


def environment_batch(inputs: LossInputs, loss: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(z, y, env)``: the step's training environments' features, labels and environment indices, concatenated.

    Raises:
      LossError: naming ``loss`` when there are fewer than 2 training environments.
    """
    views = labelled_views(inputs, loss)
    if len(views) < 2:
        raise LossError(f"{loss} needs at least 2 training environments (source='env_a,env_b,...'), got {len(views)}")
    z = jnp.concatenate([v.features for v in views]).astype(jnp.float32)
    y = jnp.concatenate([v.labels for v in views])
    env = jnp.concatenate([jnp.full((v.features.shape[0],), i, jnp.int32) for i, v in enumerate(views)])
    return z, y, env


def _make_term(name: str, conditional: bool, dann_lambda: float, mlp_width: int, mlp_depth: int) -> StatefulTerm:
    check_positive(dann_lambda, "dann_lambda", name)
    if mlp_depth < 2 or mlp_width < 1:
        raise LossError(f"{name}: mlp_depth must be >= 2 and mlp_width >= 1, got {mlp_depth} and {mlp_width}")

    def views_of(inputs: LossInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
        return environment_batch(inputs, name)

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        z, _, _ = views_of(inputs)
        k_disc, k_emb = jax.random.split(key)
        disc = EnvironmentDiscriminator(len(inputs.sources()), mlp_width, mlp_depth)
        params: dict[str, Any] = {"discriminator": disc.init(k_disc, z)["params"]}
        if conditional:  # torch's nn.Embedding initialises N(0, 1)
            params["class_embedding"] = jax.random.normal(k_emb, (inputs.source_logits.shape[1], z.shape[1]), jnp.float32)
        return TermState(params=params)

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        z, y, env = views_of(inputs)
        disc = EnvironmentDiscriminator(len(inputs.sources()), mlp_width, mlp_depth)
        h = gradient_reversal(z, dann_lambda)
        if conditional:
            h = h + term_state.params["class_embedding"][y]
        logits = disc.apply({"params": term_state.params["discriminator"]}, h)
        loss = environment_adversarial_loss(logits, env, class_balance_weights(y, inputs.source_logits.shape[1]) if conditional else None)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == env)
        return loss, term_state.state, {"disc_accuracy": accuracy}

    return StatefulTerm(init, apply)


@register_stateful_loss(
    "dann_envs",
    description="DANN over the training environments: K-way discriminator through gradient reversal (DomainBed's DANN)",
    reference="Ganin et al., 'Domain-Adversarial Training of Neural Networks', JMLR 2016; DomainBed's DANN",
)
def dann_envs_term(dann_lambda: float = 1.0, mlp_width: int = 256, mlp_depth: int = 3) -> StatefulTerm:
    """DomainBed's DANN (unconditional, no class balance) as a gradient-reversal term (module doc)."""
    return _make_term("dann_envs", False, dann_lambda, mlp_width, mlp_depth)


@register_stateful_loss(
    "cdann_envs",
    description="CDANN over the training environments: class-conditional, class-balanced K-way discriminator (DomainBed's CDANN)",
    reference="Li et al., 'Deep Domain Generalization via Conditional Invariant Adversarial Networks', ECCV 2018; DomainBed's CDANN",
)
def cdann_envs_term(dann_lambda: float = 1.0, mlp_width: int = 256, mlp_depth: int = 3) -> StatefulTerm:
    """DomainBed's CDANN (class embedding added to z, class-balanced loss) as a gradient-reversal term (module doc)."""
    return _make_term("cdann_envs", True, dann_lambda, mlp_width, mlp_depth)
