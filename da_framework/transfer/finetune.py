"""Supervised training of a classifier on in-memory arrays: the loop that fine-tuning,
quantisation-aware training and distillation share.

:func:`fit` runs ``steps`` jitted optimiser steps of ``loss_fn`` over shuffled batches of
``(x, y)`` and returns the final params.  Everything that differs between recipes is an
argument: the optimiser (freezing, layer-wise rates, pruning masks are optax
transformations, see :mod:`~da_framework.transfer.freezing` and
:mod:`~da_framework.transfer.pruning`), a ``param_transform`` applied to the params before
the forward pass (fake quantisation for QAT), and an extra loss term (distillation).
Models with mutable collections (BatchNorm statistics) are run in eval mode
(``train=False``) so their statistics stay those of the source model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from da_framework.train.finite import check_finite, first_bad_step
from da_framework.transfer.weights import TransferError

ExtraLoss = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (logits, x, y) -> scalar


def fit(
    model: Any,
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    key: jax.Array,
    *,
    batch_size: int = 32,
    param_transform: Callable[[Any], Any] | None = None,
    extra_loss: ExtraLoss | None = None,
    ce_weight: float = 1.0,
) -> dict[str, Any]:
    """Trains ``variables["params"]`` on ``(x, y)`` with cross-entropy (+ ``extra_loss``).

    Args:
      model: a Flax module returning ``(logits, features)``.
      variables: ``{"params": ..., **other collections}``; only params change.
      tx: the optimiser over ``variables["params"]``.
      x, y: inputs and int labels (NumPy).
      steps: optimiser steps.
      key: PRNG key (batch order and dropout).
      batch_size: examples per step (capped at ``len(x)``).
      param_transform: applied to the params inside the loss (e.g. fake quantisation).
      extra_loss: ``(logits, x, y) -> scalar`` added to the loss (e.g. distillation).
      ce_weight: weight of the cross-entropy term.

    Returns:
      the new variables (same structure).
    """
    if len(x) != len(y) or len(x) == 0:
        raise TransferError(f"fit needs equally long, non-empty x and y; got {len(x)} and {len(y)}")
    if steps < 0:
        raise TransferError(f"steps must be >= 0, got {steps}")
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    train_mode = not rest  # eval mode keeps BatchNorm statistics fixed
    bs = min(batch_size, len(x))
    xj, yj = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    transform = param_transform or (lambda p: p)

    def loss_fn(p: Any, xb: jax.Array, yb: jax.Array, k: jax.Array) -> jax.Array:
        logits, _ = model.apply({"params": transform(p), **rest}, xb, train=train_mode, rngs={"dropout": k})
        loss = ce_weight * optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        if extra_loss is not None:
            loss = loss + extra_loss(logits, xb, yb)
        return loss

    @jax.jit
    def step(p: Any, opt_state: Any, k: jax.Array, i: jax.Array, first_bad: jax.Array) -> tuple[Any, Any, jax.Array, jax.Array]:
        k_idx, k_drop = jax.random.split(k)
        idx = jax.random.choice(k_idx, xj.shape[0], (bs,), replace=False)
        loss, grads = jax.value_and_grad(loss_fn)(p, xj[idx], yj[idx], k_drop)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, first_bad_step(first_bad, i + 1, {"loss": loss})

    opt_state = tx.init(params)
    first_bad, loss = jnp.zeros((), jnp.int32), jnp.zeros(())
    for i in range(steps):
        params, opt_state, loss, first_bad = step(params, opt_state, jax.random.fold_in(key, i), jnp.int32(i), first_bad)
    if steps:
        last, bad_step = jax.device_get((loss, first_bad))
        check_finite(steps, {"loss": float(last)}, None, int(bad_step))
    return {"params": params, **rest}


def accuracy(
    model: Any,
    variables: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 512,
    param_transform: Callable[[Any], Any] | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode."""
    transform = param_transform or (lambda p: p)
    rest = {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def predict(p: Any, xb: jax.Array) -> jax.Array:
        return jnp.argmax(model.apply({"params": transform(p), **rest}, xb, train=False)[0], -1)

    preds = [np.asarray(predict(variables["params"], jnp.asarray(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    return float(np.mean(np.concatenate(preds) == np.asarray(y)))


def split_arrays(domain: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` of an in-memory domain split (an ``ArraySource``)."""
    source = domain.split(split)
    arrays = getattr(source, "arrays", None)
    if arrays is None:
        from da_framework.data.domain import iterate_records

        records = list(iterate_records(source))
        return np.stack([r[domain.input_key] for r in records]), np.asarray([r["label"] for r in records], np.int32)
    return np.asarray(arrays[domain.input_key]), np.asarray(arrays["label"], np.int32)


def few_labels(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of ``per_class`` examples of every class (all of a class if it has fewer; None: all).

    The choice is a deterministic function of ``seed``; indices are returned sorted.
    """
    if per_class is None:
        return np.arange(len(labels))
    if per_class <= 0:
        raise TransferError(f"per_class must be positive or None, got {per_class}")
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))
