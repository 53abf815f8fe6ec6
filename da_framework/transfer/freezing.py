"""Freezing and fine-tuning as optax transformations over labelled parameter groups.

Every recipe here labels the parameter leaves by regular expressions on their
``/``-joined paths (first matching rule wins) and hands the labels to
``optax.multi_transform``; frozen groups get ``optax.set_to_zero()``, so their updates are
exactly zero and the parameters stay bit-identical whatever the trainable groups'
optimiser does (momentum, weight decay, Adam moments are never even kept for them):

* :func:`freeze` - feature extraction with a frozen backbone, or fine-tuning only the
  layers whose paths match ``trainable``;
* :func:`discriminative_lr` - layer-wise learning rates (Howard & Ruder, "Universal Language
  Model Fine-tuning for Text Classification", ACL 2018, sec. 3.2: lower layers get smaller
  rates);
* :func:`gradual_unfreezing` - groups become trainable at given steps (ULMFiT sec. 3.3),
  through :func:`frozen_until`, which holds a group's updates at zero and its inner
  optimiser state unchanged until its start step.

The result is an ordinary ``optax.GradientTransformation`` usable by any train step; the
params passed to ``init`` define the structure, so build it from the tree it will update
(for the train state of :mod:`da_framework.train`, the ``{"model": ..., "aux": ...}`` tree
with paths such as ``model/backbone/Conv_0/kernel``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from da_framework.transfer.weights import TransferError, flatten, path_string

Rules = Sequence[tuple[str, str]]


def label_params(params: Any, rules: Rules, default: str) -> Any:
    """A tree of group labels, one per leaf of ``params``.

    Args:
      params: the parameter tree (nested dicts).
      rules: ``(regex, label)`` pairs; a leaf gets the label of the first regex that
        ``re.search`` finds in its path.
      default: label of leaves that match no rule.
    """
    try:
        compiled = [(re.compile(p), lab) for p, lab in rules]
    except re.error as e:
        raise TransferError(f"bad parameter-path regex: {e}") from None

    def label(path: tuple[Any, ...], leaf: Any) -> str:
        del leaf
        name = path_string(path)
        return next((lab for pat, lab in compiled if pat.search(name)), default)

    # tree_map_with_path keeps the exact structure (empty sub-dicts such as a train state's
    # "aux": {} included), which optax.multi_transform needs.
    return jax.tree_util.tree_map_with_path(label, params)



def freeze(tx: optax.GradientTransformation, params: Any, trainable: str | Sequence[str]) -> optax.GradientTransformation:
    """``tx`` on the leaves whose path matches ``trainable``; every other leaf is frozen.

    Args:
      tx: the optimiser of the trainable leaves.
      params: the tree the result will update (gives the structure).
      trainable: regex(es), e.g. ``r"head/"`` (feature extraction: only the new head
        trains) or ``[r"head/", r"bottleneck/", r"Dense_0"]``.

    Raises:
      TransferError: if no leaf is trainable (a typo in the pattern would otherwise
        silently freeze everything).
    """
    patterns = [trainable] if isinstance(trainable, str) else list(trainable)
    labels = label_params(params, [(p, "train") for p in patterns], "frozen")
    if "train" not in jax.tree.leaves(labels):
        paths = ", ".join(list(flatten(params))[:8])
        raise TransferError(f"no parameter path matches trainable={patterns!r}; paths look like: {paths}, ...")
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def discriminative_lr(
    make_tx: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation],
    params: Any,
    groups: Sequence[tuple[str, float]],
    base_lr: float,
    default_scale: float = 1.0,
) -> optax.GradientTransformation:
    """Layer-wise learning rates: ``make_tx(base_lr * scale)`` per group of leaves.

    Args:
      make_tx: builds the optimiser from a learning rate, e.g. ``lambda lr: optax.adamw(lr, weight_decay=1e-4)``.
      params: the tree the result will update.
      groups: ``(regex, scale)`` pairs, first match wins; scale 0 freezes the group.
      base_lr: the learning rate of scale 1.
      default_scale: scale of leaves that match no group.
    """
    scales = [s for _, s in groups] + [default_scale]
    if any(s < 0 for s in scales):
        raise TransferError(f"learning-rate scales must be >= 0, got {scales}")
    names = [f"group{i}" for i in range(len(groups))]
    labels = label_params(params, [(p, n) for (p, _), n in zip(groups, names)], "default")
    txs = {
        n: (make_tx(base_lr * s) if s > 0 else optax.set_to_zero()) for n, s in zip([*names, "default"], scales)
    }
    return optax.multi_transform(txs, labels)


class FrozenUntilState(NamedTuple):
    """State of :func:`frozen_until`: steps seen and the inner optimiser's state."""

    count: jax.Array
    inner: optax.OptState


def frozen_until(tx: optax.GradientTransformation, start_step: int) -> optax.GradientTransformation:
    """``tx`` that emits zero updates, and keeps its state unchanged, before ``start_step``.

    From update number ``start_step`` (0-based) on it behaves exactly as ``tx`` started
    fresh at that step (e.g. Adam's bias correction counts from there).
    """
    if start_step < 0:
        raise TransferError(f"start_step must be >= 0, got {start_step}")

    def init_fn(params: Any) -> FrozenUntilState:
        return FrozenUntilState(jnp.zeros((), jnp.int32), tx.init(params))

    def update_fn(updates: Any, state: FrozenUntilState, params: Any = None) -> tuple[Any, FrozenUntilState]:
        active = state.count >= start_step
        new_updates, new_inner = tx.update(updates, state.inner, params)
        out = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        inner = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_inner, state.inner)
        return out, FrozenUntilState(state.count + 1, inner)

    return optax.GradientTransformation(init_fn, update_fn)


def gradual_unfreezing(
    tx: optax.GradientTransformation | Callable[[int], optax.GradientTransformation],
    params: Any,
    stages: Sequence[tuple[str, int]],
    default_start: int | None = None,
) -> optax.GradientTransformation:
    """Groups of leaves that start training at given steps (ULMFiT's gradual unfreezing).

    Args:
      tx: the optimiser of every group (each group gets its own state), or a function
        ``stage_index -> optimiser`` (e.g. to combine with discriminative rates).
      params: the tree the result will update.
      stages: ``(regex, start_step)`` pairs, first match wins, e.g.
        ``[("head/", 0), ("bottleneck/", 100), ("Dense_0", 200), ("Conv_1", 300)]``.
      default_start: start step of leaves matching no stage; None keeps them frozen.
    """
    make = tx if callable(tx) and not isinstance(tx, optax.GradientTransformation) else (lambda i: tx)
    names = [f"stage{i}" for i in range(len(stages))]
    labels = label_params(params, [(p, n) for (p, _), n in zip(stages, names)], "rest")
    txs: dict[str, optax.GradientTransformation] = {
        n: frozen_until(make(i), start) for i, (n, (_, start)) in enumerate(zip(names, stages))
    }
    txs["rest"] = optax.set_to_zero() if default_start is None else frozen_until(make(len(stages)), default_start)
    return optax.multi_transform(txs, labels)


def trainable_mask(params: Any, trainable: str | Sequence[str]) -> Any:
    """Boolean tree: True for leaves whose path matches ``trainable`` (for ``optax.masked`` etc.)."""
    patterns = [trainable] if isinstance(trainable, str) else list(trainable)
    labels = label_params(params, [(p, "t") for p in patterns], "f")
    return jax.tree.map(lambda lab: lab == "t", labels)


def count_params(params: Any, labels: Any | None = None) -> Mapping[str, int] | int:
    """Number of scalars in ``params``; per label when a label tree is given."""
    if labels is None:
        return int(sum(x.size for x in jax.tree.leaves(params)))
    counts: dict[str, int] = {}
    for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
        counts[lab] = counts.get(lab, 0) + int(x.size)
    return counts
