"""Embedding transfer from a 1-D convolutional sentiment model into a bidirectional LSTM.

1. Source: ``text_cnn`` (embedding 32, convolutions of width 3 and 5 with 32 filters each)
   trained on the labelled source training examples (``SOURCE_STEPS`` Adam steps, batch 64).
2. Target: ``bilstm`` (embedding 32, 32 units per direction, 32-d bottleneck).  Only the
   embedding table is transferred: ``transfer_params(..., include=r"^backbone/embedding/")``.
3. Fine-tuning on ``labels_per_class`` labelled target training examples, three ways
   (``FINETUNE_STEPS`` Adam steps, batch 32): ``scratch``; ``transfer`` (embedding fine-tuned
   at 0.1x the learning rate); ``transfer_frozen`` (embedding frozen).

Data (``DA_TEXT_DATASET``):

* ``imdb_local``: the local raw-text file ``<data_dir>/imdb/imdb.npz`` (domain ``imdb``,
  :mod:`da_framework.data.local_imdb`: tokenised here, vocabulary 20,000 from its train split).
  Source and target are both IMDB (model-to-model transfer on one domain), on disjoint
  reviews: per seed, ``LOCAL_SOURCE_PER_CLASS`` = 5,000 reviews per class of the 22,500-review
  ``train`` split train the source (capped, for 2 CPU cores), and the target labels
  (``LOCAL_LABELS_PER_CLASS`` = 10, 100, 1000 per class) are drawn from the other 12,500.
  Reviews are capped at ``LOCAL_LENGTH`` = 128 token ids (the first 128 words; the tfds path
  uses 256).  Metric: accuracy on all 25,000 test reviews.
* ``imdb``: the prepared tfds ``imdb_reviews`` (256 token ids), the source trained on every
  train example and the target labels drawn from the same split (``LABELS_PER_CLASS``).
* ``synthetic``: the code-built pair ``text/source`` (movie style) -> ``text/target``
  (product style), ``LABELS_PER_CLASS`` = 5, 20, all.
* ``auto`` (the default): ``imdb_local`` if the file is in the data dir, else ``imdb`` if
  ``imdb_reviews`` is prepared, else ``synthetic``.

Run: ``DA_DATA_DIR=../shared/data da run imdb_text_transfer --seeds 3`` (real IMDB);
``DA_TEXT_DATASET=synthetic da run imdb_text_transfer --seeds 3``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SOURCE_STEPS = 400
FINETUNE_STEPS = 300
LABELS_PER_CLASS = (5, 20, None)
LOCAL_LABELS_PER_CLASS = (10, 100, 1000)
LOCAL_SOURCE_PER_CLASS = 5000
LOCAL_LENGTH = 128
VARIANTS = ("scratch", "transfer", "transfer_frozen")
DATASETS = ("auto", "synthetic", "imdb", "imdb_local")
EMBED, FILTERS, HIDDEN = 32, 32, 32
LR = 2e-3


def dataset_choice(choice: str | None = None, data_dir: str | None = None) -> str:
    """``"synthetic"``, ``"imdb"`` (tfds) or ``"imdb_local"`` from ``choice`` or ``$DA_TEXT_DATASET``."""
    choice = choice or os.environ.get("DA_TEXT_DATASET", "auto")
    if choice not in DATASETS:
        raise ValueError(f"DA_TEXT_DATASET must be one of {', '.join(DATASETS)}; got {choice!r}")
    if choice != "auto":
        return choice
    from da_framework.data.catalog import DatasetNotPreparedError
    from da_framework.data.local import has_local
    from da_framework.data.registry import get_domain

    if has_local("imdb", data_dir):
        return "imdb_local"
    try:
        get_domain("imdb_reviews", data_dir)
    except DatasetNotPreparedError:
        return "synthetic"
    return "imdb"


def domains(dataset: str) -> tuple[str, str, int]:
    """``(source domain, target domain, vocabulary size)`` of ``dataset``."""
    if dataset == "imdb":
        from da_framework.data.catalog import IMDB_VOCAB_SIZE

        return "imdb_reviews", "imdb_reviews", IMDB_VOCAB_SIZE
    if dataset == "imdb_local":
        from da_framework.data.local_imdb import VOCAB_SIZE

        return "imdb", "imdb", VOCAB_SIZE
    from da_framework.data.text_synthetic import vocab_size

    return "text/source", "text/target", vocab_size()


def get_config() -> dict:
    """The synthetic pair with the BiLSTM target model (ExperimentConfig keys)."""
    from da_framework.data.text_synthetic import vocab_size

    return {"source": "text/source", "target": "text/target", "model": "bilstm", "bottleneck_dim": HIDDEN,
            "model_kwargs": {"vocab_size": vocab_size(), "embed_dim": EMBED, "hidden": HIDDEN}}  # fmt: skip


def load_data(dataset: str, seed: int, data_dir: str | None = None) -> dict[str, Any]:
    """Arrays of one seed: ``source``, ``source_test``, ``target`` (the label pool), ``target_test`` as
    ``(x, y)`` pairs, and ``vocab`` (number of token ids).

    ``imdb_local``: the source is ``LOCAL_SOURCE_PER_CLASS`` reviews per class of IMDB train
    (``few_labels`` with seed ``90_000 + seed``) and the target pool is the rest of that split.
    """
    import numpy as np

    from da_framework.data.registry import get_domain
    from da_framework.transfer.finetune import few_labels, split_arrays

    src_name, tgt_name, vocab = domains(dataset)
    if dataset == "imdb_local":
        from da_framework.data.local_imdb import imdb_domain

        d = imdb_domain(data_dir, vocab_size=vocab, length=LOCAL_LENGTH)
        x, y = split_arrays(d, "train")
        src = few_labels(y, LOCAL_SOURCE_PER_CLASS, 90_000 + seed)
        rest = np.setdiff1d(np.arange(len(y)), src)
        test = split_arrays(d, "test")
        return {"source": (x[src], y[src]), "source_test": test, "target": (x[rest], y[rest]),
                "target_test": test, "vocab": vocab}  # fmt: skip
    source, target = get_domain(src_name, data_dir), get_domain(tgt_name, data_dir)
    return {"source": split_arrays(source, "train"), "source_test": split_arrays(source, "test"),
            "target": split_arrays(target, "train"), "target_test": split_arrays(target, "test"), "vocab": vocab}  # fmt: skip


def train_source(data: dict[str, Any], seed: int, steps: int = SOURCE_STEPS) -> tuple[Any, dict, float]:
    """The source ``text_cnn`` trained on ``data["source"]``: ``(model, variables, source test accuracy)``."""
    import jax
    import optax

    from da_framework.models.registry import make_model
    from da_framework.transfer.finetune import accuracy, fit

    x, y = data["source"]
    model = make_model("text_cnn", 2, None, vocab_size=data["vocab"], embed_dim=EMBED, filters=FILTERS)
    variables = model.init(jax.random.key(50_000 + seed), x[:2])
    variables = fit(model, variables, optax.adam(LR), x, y, steps, jax.random.key(60_000 + seed), batch_size=64)
    return model, variables, accuracy(model, variables, *data["source_test"])


def finetune_target(
    data: dict[str, Any], variant: str, source_params: dict | None, per_class: int | None, seed: int,
    steps: int = FINETUNE_STEPS,
) -> tuple[Any, dict, int]:  # fmt: skip
    """The BiLSTM target fine-tuned on few labels of ``data["target"]``: ``(model, variables, number labelled)``."""
    import jax
    import optax

    from da_framework.models.registry import make_model
    from da_framework.transfer import transfer_params
    from da_framework.transfer.finetune import few_labels, fit
    from da_framework.transfer.freezing import discriminative_lr, freeze

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    x, y = data["target"]
    idx = few_labels(y, per_class, seed)
    model = make_model("bilstm", 2, HIDDEN, vocab_size=data["vocab"], embed_dim=EMBED, hidden=HIDDEN)
    params = model.init(jax.random.key(70_000 + seed), x[:2])["params"]
    if variant != "scratch":
        params, _ = transfer_params(source_params, params, include=r"^backbone/embedding/", strict=True)
    if variant == "scratch":
        tx = optax.adam(LR)
    elif variant == "transfer":
        tx = discriminative_lr(optax.adam, params, [(r"^backbone/embedding/", 0.1)], base_lr=LR)
    else:
        tx = freeze(optax.adam(LR), params, trainable=[r"^backbone/bilstm/", r"^bottleneck/", r"^head/"])
    variables = fit(model, {"params": params}, tx, x[idx], y[idx], steps, jax.random.key(80_000 + seed), batch_size=32)
    return model, variables, len(idx)


def run(
    results_dir: Path, seeds: list[int], steps: int | None, dataset: str | None = None, data_dir: str | None = None
) -> list[dict]:
    """Every (labels per class, variant, seed); ``steps`` overrides the fine-tuning steps.

    Writes ``<results_dir>/imdb_text_transfer/rows.json`` and ``summary.json`` and returns one
    mean row per (labels per class, variant).
    """
    import json
    import time

    import numpy as np

    from da_framework.transfer.finetune import accuracy

    dataset = dataset_choice(dataset, data_dir)
    budgets = LOCAL_LABELS_PER_CLASS if dataset == "imdb_local" else LABELS_PER_CLASS
    caps = {"length": LOCAL_LENGTH, "source_examples": 2 * LOCAL_SOURCE_PER_CLASS} if dataset == "imdb_local" else {}
    rows, t_start = [], time.time()
    for seed in seeds:
        data = load_data(dataset, seed, data_dir)
        t0 = time.time()
        src_model, src_vars, src_acc = train_source(data, seed)
        src_on_target = accuracy(src_model, src_vars, *data["target_test"])
        src_s = round(time.time() - t0, 1)
        for per_class in budgets:
            for variant in VARIANTS:
                t0 = time.time()
                model, variables, n = finetune_target(data, variant, src_vars["params"], per_class, seed, steps or FINETUNE_STEPS)
                rows.append({"dataset": dataset, "labels_per_class": "all" if per_class is None else per_class,
                             "labelled": n, "variant": variant, "seed": seed,
                             "target_test_accuracy": round(accuracy(model, variables, *data["target_test"]), 4),
                             "source_model_on_target": round(src_on_target, 4),
                             "source_test_accuracy": round(src_acc, 4), **caps,
                             "source_wall_s": src_s, "target_wall_s": round(time.time() - t0, 1)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    out = Path(results_dir) / "imdb_text_transfer"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    means = []
    for per_class in dict.fromkeys(r["labels_per_class"] for r in rows):
        for variant in VARIANTS:
            accs = [r["target_test_accuracy"] for r in rows if r["labels_per_class"] == per_class and r["variant"] == variant]
            means.append({"dataset": dataset, "labels_per_class": per_class, "variant": variant, "seeds": len(accs),
                          "mean_acc": round(float(np.mean(accs)), 4), "std_acc": round(float(np.std(accs)), 4)})  # fmt: skip
    (out / "summary.json").write_text(json.dumps(means, indent=1))
    print(f"total wall {time.time() - t_start:.0f} s", flush=True)
    return means
