"""Cross-category tasks cut from one labelled dataset: two positive classes + "other".

Used by ``projects/cifar_catsdogs_to_birds_airplanes.py``: a CIFAR-10 cats/dogs task
(source) and a birds/airplanes task (target), each a 3-way problem whose third class,
``other``, holds images of the remaining classes (the negatives).  The negatives are
subsampled to the mean size of the two positive classes, so the three classes are
balanced; the draw is ``numpy.random.default_rng(seed)``.

Positive classes of one task may appear among the negatives of the other (the cats/dogs
task's "other" contains birds and airplanes), as in any one-vs-rest split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from da_framework.data.domain import ArraySource, DomainError, RandomAccessSource

OTHER = 2  # label of the negative class in a task


def task_indices(
    labels: np.ndarray, positives: Sequence[int], seed: int, num_negatives: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Picks a balanced 3-way task from integer ``labels``.

    Args:
      labels: original class ids, shape (n,).
      positives: the two original class ids that become task labels 0 and 1.
      seed: seed of the negatives' subsample.
      num_negatives: negatives kept (default: the mean count of the two positives,
        capped at what exists).

    Returns:
      ``(indices into labels (sorted), task labels int32 in {0, 1, 2})``.

    Raises:
      DomainError: for a task without two distinct positives or without examples.
    """
    labels = np.asarray(labels).reshape(-1)
    if len(positives) != 2 or positives[0] == positives[1]:
        raise DomainError(f"a category task needs two distinct positive classes, got {tuple(positives)}")
    pos = [np.flatnonzero(labels == c) for c in positives]
    if min(len(p) for p in pos) == 0:
        raise DomainError(f"classes {tuple(positives)} do not all occur in the labels")
    neg = np.flatnonzero(~np.isin(labels, positives))
    n_neg = int(round((len(pos[0]) + len(pos[1])) / 2)) if num_negatives is None else num_negatives
    neg = np.sort(np.random.default_rng(seed).permutation(neg)[: min(n_neg, len(neg))])
    idx = np.concatenate([pos[0], pos[1], neg])
    task = np.concatenate([np.zeros(len(pos[0])), np.ones(len(pos[1])), np.full(len(neg), OTHER)]).astype(np.int32)
    order = np.argsort(idx, kind="stable")
    return idx[order], task[order]


def load_task(source: RandomAccessSource, positives: Sequence[int], seed: int, limit: int | None = None) -> ArraySource:
    """Reads a balanced 3-way task (:func:`task_indices`) from ``source`` into memory.

    Args:
      source: records with ``"image"`` and ``"label"`` (original class ids).
      positives: the two original class ids that become labels 0 and 1.
      seed: seed of the negatives' subsample and of the ``limit`` subsample.
      limit: keep at most this many examples per task class (None: all).
    """
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    idx, task = task_indices(labels, positives, seed)
    if limit is not None:
        rng = np.random.default_rng(seed + 1)
        keep = np.concatenate([rng.permutation(np.flatnonzero(task == c))[:limit] for c in range(3)])
        keep.sort()
        idx, task = idx[keep], task[keep]
    images = np.stack([np.asarray(source[int(i)]["image"], np.float32) for i in idx])
    return ArraySource({"image": images, "label": task})
