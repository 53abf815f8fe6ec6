"""Train/val split of a local file whose train arrays are stored class by class.

:mod:`da_framework.data.local` cuts ``val`` as the last 10% of the file's train arrays.  That
is right for files in an unordered storage order (MNIST, USPS), but a file sorted by class
(the shared ``cifar10_4class`` and ``imdb`` copies: all of class 0, then all of class 1, ...)
would get a ``val`` split of the last class only.  :func:`stratified_split` cuts per class
instead: of each class's examples, in file order, the first ``round(0.9 n_c)`` go to
``train`` and the rest to ``val``.  No randomness: the split is a function of the labels.
"""

from __future__ import annotations

import numpy as np

from da_framework.data.domain import DomainError

TRAIN_FRACTION = 0.9


def stratified_split(labels: np.ndarray, train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, val indices)``, both sorted, cut per class in file order.

    Args:
      labels: integer labels, shape ``(n,)``.
      train_fraction: the share of each class kept for ``train`` (``round(fraction * n_c)``).

    Raises:
      DomainError: ``train_fraction`` outside ``(0, 1]`` or labels not one-dimensional.

    >>> stratified_split(np.array([0, 0, 0, 0, 1, 1]), 0.5)
    (array([0, 1, 4]), array([2, 3, 5]))
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DomainError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not 0.0 < train_fraction <= 1.0:
        raise DomainError(f"train_fraction must be in (0, 1], got {train_fraction}")
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        cut = round(train_fraction * len(idx))
        train.append(idx[:cut])
        val.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
