"""A stateful loss term in one file: MSTN's moving semantic centroids.

Xie, Zheng, Chen & Chen, "Learning Semantic Representations for Unsupervised Domain
Adaptation", ICML 2018 (MSTN), semantic loss: per class k the source and target centroids move
by an exponential moving average, C_k <- theta C_k + (1 - theta) mean{f(x) : class k in the
batch}, target classes being the model's pseudo-labels, and the loss is
sum_k ||C^S_k - C^T_k||^2.  Variant: a class absent from a batch keeps its centroid.
"""

import jax
import jax.numpy as jnp

from da_framework.losses import LossInputs, StatefulTerm, TermState, register_stateful_loss


def moved_centroids(old: jax.Array, features: jax.Array, labels: jax.Array, theta: float) -> jax.Array:
    """theta * old + (1 - theta) * the batch mean of each class present; absent classes keep ``old``."""
    onehot = jax.nn.one_hot(labels, old.shape[0], dtype=features.dtype)
    counts = onehot.sum(0)
    means = (onehot.T @ features) / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where((counts > 0)[:, None], theta * jax.lax.stop_gradient(old) + (1 - theta) * means, old)


@register_stateful_loss(
    "moving_centroids",
    description="squared distance of moving-average source and target class centroids (MSTN)",
    reference="Xie et al., 'Learning Semantic Representations for Unsupervised Domain Adaptation', ICML 2018",
    overwrite=True,
)
def moving_centroids(theta: float = 0.7) -> StatefulTerm:
    """MSTN's semantic loss; the state is the (source, target) centroids, each (classes, features)."""

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        del key  # nothing random: the centroids start at zero, as in the paper
        shape = (inputs.source_logits.shape[1], inputs.source_features.shape[1])
        return TermState(state=(jnp.zeros(shape), jnp.zeros(shape)))

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, tuple, dict]:
        source, target = term_state.state
        pseudo_labels = jnp.argmax(inputs.target_logits, axis=-1)
        source = moved_centroids(source, inputs.source_features, inputs.source_labels, theta)
        target = moved_centroids(target, inputs.target_features, pseudo_labels, theta)
        loss = jnp.sum((source - target) ** 2)
        classes_seen = jnp.sum(jnp.any(jax.nn.one_hot(pseudo_labels, source.shape[0]) > 0, axis=0))
        return loss, jax.lax.stop_gradient((source, target)), {"target_classes": classes_seen}

    return StatefulTerm(init, apply)
