"""Embedding transfer from a 1-D convolutional sentiment model into a bidirectional LSTM.

1. Source: ``text_cnn`` (embedding 32, convolutions of width 3 and 5 with 32 filters each)
   trained on every labelled source training example (``SOURCE_STEPS`` Adam steps).
2. Target: ``bilstm`` (embedding 32, 32 units per direction, 32-d bottleneck).  Only the
   embedding table is transferred: ``transfer_params(..., include=r"^backbone/embedding/")``.
3. Fine-tuning on ``labels_per_class`` labelled target training examples, three ways
   (``FINETUNE_STEPS`` Adam steps): ``scratch``; ``transfer`` (embedding fine-tuned at 0.1x
   the learning rate); ``transfer_frozen`` (embedding frozen).

Data (``DA_TEXT_DATASET``): ``synthetic`` (default when IMDB is not prepared): the code-built
pair ``text/source`` (movie style) -> ``text/target`` (product style); ``imdb``: source and
target are both ``imdb_reviews`` (model-to-model transfer on one domain; needs the prepared
tfds data, see ``da list``); ``auto`` (the default): ``imdb`` if ``imdb_reviews`` is
prepared, else ``synthetic``.

Run: ``da run imdb_text_transfer --seeds 3`` (``DA_TEXT_DATASET=imdb da run ...`` for IMDB).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SOURCE_STEPS = 400
FINETUNE_STEPS = 300
LABELS_PER_CLASS = (5, 20, None)
VARIANTS = ("scratch", "transfer", "transfer_frozen")
EMBED, FILTERS, HIDDEN = 32, 32, 32
LR = 2e-3


def dataset_choice(choice: str | None = None) -> str:
    """``"synthetic"`` or ``"imdb"`` from ``choice`` or ``$DA_TEXT_DATASET`` (``auto``: imdb if prepared)."""
    choice = choice or os.environ.get("DA_TEXT_DATASET", "auto")
    if choice not in ("auto", "synthetic", "imdb"):
        raise ValueError(f"DA_TEXT_DATASET must be auto, synthetic or imdb; got {choice!r}")
    if choice != "auto":
        return choice
    from da_framework.data.catalog import DatasetNotPreparedError
    from da_framework.data.registry import get_domain

    try:
        get_domain("imdb_reviews")
    except DatasetNotPreparedError:
        return "synthetic"
    return "imdb"


def domains(dataset: str) -> tuple[str, str, int]:
    """``(source domain, target domain, vocabulary size)`` of ``dataset``."""
    if dataset == "imdb":
        from da_framework.data.catalog import IMDB_VOCAB_SIZE

        return "imdb_reviews", "imdb_reviews", IMDB_VOCAB_SIZE
    from da_framework.data.text_synthetic import vocab_size

    return "text/source", "text/target", vocab_size()


def get_config() -> dict:
    """The synthetic pair with the BiLSTM target model (ExperimentConfig keys)."""
    from da_framework.data.text_synthetic import vocab_size

    return {"source": "text/source", "target": "text/target", "model": "bilstm", "bottleneck_dim": HIDDEN,
            "model_kwargs": {"vocab_size": vocab_size(), "embed_dim": EMBED, "hidden": HIDDEN}}  # fmt: skip


def train_source(dataset: str, seed: int, steps: int = SOURCE_STEPS) -> tuple[Any, dict, float]:
    """The source ``text_cnn`` trained on the source domain: ``(model, variables, source test accuracy)``."""
    import jax
    import optax

    from da_framework.data.registry import get_domain
    from da_framework.models.registry import make_model
    from da_framework.transfer.finetune import accuracy, fit, split_arrays

    src_name, _, vocab = domains(dataset)
    source = get_domain(src_name)
    x, y = split_arrays(source, "train")
    model = make_model("text_cnn", source.num_classes, None, vocab_size=vocab, embed_dim=EMBED, filters=FILTERS)
    variables = model.init(jax.random.key(50_000 + seed), x[:2])
    variables = fit(model, variables, optax.adam(LR), x, y, steps, jax.random.key(60_000 + seed), batch_size=64)
    xt, yt = split_arrays(source, "test")
    return model, variables, accuracy(model, variables, xt, yt)


def finetune_target(
    dataset: str, variant: str, source_params: dict | None, per_class: int | None, seed: int, steps: int = FINETUNE_STEPS
) -> tuple[Any, dict, int]:
    """The BiLSTM target fine-tuned on few target labels: ``(model, variables, number labelled)``."""
    import jax
    import optax

    from da_framework.data.registry import get_domain
    from da_framework.models.registry import make_model
    from da_framework.transfer import transfer_params
    from da_framework.transfer.finetune import few_labels, fit, split_arrays
    from da_framework.transfer.freezing import discriminative_lr, freeze

    _, tgt_name, vocab = domains(dataset)
    target = get_domain(tgt_name)
    x, y = split_arrays(target, "train")
    idx = few_labels(y, per_class, seed)
    model = make_model("bilstm", target.num_classes, HIDDEN, vocab_size=vocab, embed_dim=EMBED, hidden=HIDDEN)
    params = model.init(jax.random.key(70_000 + seed), x[:2])["params"]
    if variant != "scratch":
        params, _ = transfer_params(source_params, params, include=r"^backbone/embedding/", strict=True)
    if variant == "scratch":
        tx = optax.adam(LR)
    elif variant == "transfer":
        tx = discriminative_lr(optax.adam, params, [(r"^backbone/embedding/", 0.1)], base_lr=LR)
    elif variant == "transfer_frozen":
        tx = freeze(optax.adam(LR), params, trainable=[r"^backbone/bilstm/", r"^bottleneck/", r"^head/"])
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    variables = fit(model, {"params": params}, tx, x[idx], y[idx], steps, jax.random.key(80_000 + seed), batch_size=32)
    return model, variables, len(idx)


def run(results_dir: Path, seeds: list[int], steps: int | None, dataset: str | None = None) -> list[dict]:
    """Every (labels per class, variant, seed); ``steps`` overrides the fine-tuning steps.

    Writes ``<results_dir>/imdb_text_transfer/rows.json`` and returns one mean row per
    (labels per class, variant).
    """
    import json

    import numpy as np

    from da_framework.data.registry import get_domain
    from da_framework.transfer.finetune import accuracy, split_arrays

    dataset = dataset_choice(dataset)
    xt, yt = split_arrays(get_domain(domains(dataset)[1]), "test")
    rows = []
    for seed in seeds:
        src_model, src_vars, src_acc = train_source(dataset, seed)
        src_on_target = accuracy(src_model, src_vars, xt, yt)
        for per_class in LABELS_PER_CLASS:
            for variant in VARIANTS:
                model, variables, n = finetune_target(dataset, variant, src_vars["params"], per_class, seed, steps or FINETUNE_STEPS)
                rows.append({"dataset": dataset, "labels_per_class": "all" if per_class is None else per_class,
                             "labelled": n, "variant": variant, "seed": seed,
                             "target_test_accuracy": round(accuracy(model, variables, xt, yt), 4),
                             "source_model_on_target": round(src_on_target, 4),
                             "source_test_accuracy": round(src_acc, 4)})  # fmt: skip
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
    return means
