"""Evaluation: accuracy and per-class accuracy of a classifier on a data split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from da_framework.data.domain import RandomAccessSource, batch_iterator
from da_framework.models.classifier import Classifier


def make_predict_fn(model: Classifier) -> Callable[[dict[str, Any], jax.Array], tuple[jax.Array, jax.Array]]:
    """Returns a jitted ``predict(variables, x) -> (logits, features)`` in eval mode."""

    @jax.jit
    def predict(variables: dict[str, Any], x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return model.apply(variables, x, train=False)

    return predict


def predict_split(
    predict: Callable[[dict[str, Any], jax.Array], tuple[jax.Array, jax.Array]],
    variables: dict[str, Any],
    source: RandomAccessSource,
    batch_size: int,
    input_key: str = "image",
    workers: int = 0,
    read_threads: int = 4,
) -> dict[str, np.ndarray]:
    """Runs ``predict`` over a whole split in fixed-size (padded) batches (``workers``/``read_threads``:
    grain reading processes/threads, as in training; the order of examples does not depend on them).

    Returns:
      ``{"logits": (n, k), "features": (n, d), "label": (n,)}`` as NumPy arrays.
    """
    logits, feats, labels = [], [], []
    for batch in batch_iterator(source, batch_size, seed=0, shuffle=False, repeat=False, drop_remainder=False,
                                workers=workers, read_threads=read_threads):
        x = batch[input_key]
        n = x.shape[0]
        if n < batch_size:  # pad so every call has the same shape: one compilation
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        lo, fe = predict(variables, jnp.asarray(x))
        logits.append(np.asarray(lo[:n]))
        feats.append(np.asarray(fe[:n]))
        labels.append(np.asarray(batch["label"]))
    return {"logits": np.concatenate(logits), "features": np.concatenate(feats), "label": np.concatenate(labels)}


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, per-class accuracy (NaN for absent classes) and their mean."""
    pred = np.argmax(logits, -1)
    per_class = [
        float(np.mean(pred[labels == c] == c)) if np.any(labels == c) else float("nan")
        for c in range(num_classes)
    ]
    return {
        "accuracy": float(np.mean(pred == labels)),
        "per_class_accuracy": per_class,
        "mean_class_accuracy": float(np.nanmean(per_class)),
        "num_examples": int(len(labels)),
    }


def evaluate(
    predict: Callable[[dict[str, Any], jax.Array], tuple[jax.Array, jax.Array]],
    variables: dict[str, Any],
    source: RandomAccessSource,
    num_classes: int,
    batch_size: int = 512,
    input_key: str = "image",
    workers: int = 0,
    read_threads: int = 4,
) -> dict[str, Any]:
    """Classification metrics of the model on one split."""
    out = predict_split(predict, variables, source, batch_size, input_key, workers, read_threads)
    return classification_metrics(out["logits"], out["label"], num_classes)
