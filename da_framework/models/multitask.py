"""One shared backbone with several task heads (multi-task transfer).

``MultiTaskClassifier(backbone, tasks={"digit": 10, "parity": 2})`` returns
``({task: logits}, features)``; parameters live under ``backbone``, ``bottleneck`` and
``head_<task>``, so a trained backbone is transferred in with
``transfer_params(src, params, include=r"^backbone/")`` and a new task is one more head.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from da_framework.errors import UserError
from da_framework.models.classifier import Bottleneck


class MultiTaskClassifier(nn.Module):
    """A backbone, an optional bottleneck and one linear head per task.

    Attributes:
      backbone: module mapping inputs to (batch, d) features (accepts ``train``).
      tasks: task name -> number of classes.
      bottleneck_dim: width of a shared bottleneck, or None.
    """

    backbone: nn.Module
    tasks: Mapping[str, int]
    bottleneck_dim: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[dict[str, jax.Array], jax.Array]:
        """Returns ``({task: (batch, classes) logits}, features)``."""
        if not self.tasks:
            raise UserError("MultiTaskClassifier needs at least one task, e.g. tasks={'label': 10}")
        f = self.backbone(x, train=train)
        if self.bottleneck_dim:
            f = Bottleneck(self.bottleneck_dim, name="bottleneck")(f, train=train)
        return {t: nn.Dense(n, name=f"head_{t}")(f) for t, n in self.tasks.items()}, f


def multitask_loss(
    logits: Mapping[str, jax.Array], labels: Mapping[str, jax.Array], weights: Mapping[str, float] | None = None
) -> jax.Array:
    """Weighted sum over tasks of the mean cross-entropy; labels < 0 mark missing labels (ignored).

    Args:
      logits: task -> (n, k) logits.
      labels: task -> (n,) int labels (-1 where the example has no label for the task).
      weights: task -> weight (default 1 each).
    """
    missing = sorted(set(logits) - set(labels))
    if missing:
        raise UserError(f"multitask_loss: no labels for task(s) {missing}; pass labels for every head")
    total = jnp.zeros((), jnp.float32)
    for task, lo in logits.items():
        y = labels[task]
        valid = y >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(lo, jnp.where(valid, y, 0))
        task_loss = jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
        total = total + (1.0 if weights is None else weights.get(task, 1.0)) * task_loss
    return total
