"""Weight transfer into a wider model, fine-tuned on few target labels, against training from scratch.

1. Source: LeNet (conv 20, conv 50, dense 256, no bottleneck) trained on ``digits/source``
   (``SOURCE_STEPS`` Adam steps), saved with orbax under
   ``<results_dir>/digits_transfer_wider/source_seed<k>_steps<n>`` (restored if already
   there and its saved settings are this file's; ``da run --force`` retrains it).
2. Target: a wider LeNet (dense 512) with a 128-d bottleneck.  ``transfer_params(...,
   include=r"^backbone/")`` copies both convolutions; the dense layer (256 -> 512 columns) is
   reported as a shape mismatch and the bottleneck/head stay freshly initialised.
3. Fine-tuning on ``labels_per_class`` labelled ``digits/rotate`` training images
   (2, 5, 10 or all, 50-59 per class; the rotated target pool has 539 training images),
   three ways, each ``FINETUNE_STEPS`` Adam steps:

   * ``scratch``: the wider model from a random initialisation;
   * ``transfer``: transferred convolutions, all layers trained, the transferred ones at
     0.1x the learning rate (layer-wise rates);
   * ``transfer_frozen``: transferred convolutions frozen (feature extraction);
   * ``transfer_widened``: convolutions copied and the source's 256-unit dense layer copied
     into the first 256 of the 512 units (``widen=True``); every layer trained at the full rate.

Reported: accuracy on the ``digits/rotate`` test split (179 images).
Run: ``da run digits_transfer_wider --seeds 3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCE_KWARGS = {"channels": (20, 50), "dense": 256}
TARGET_KWARGS = {"channels": (20, 50), "dense": 512}
TARGET_BOTTLENECK = 128
SOURCE_STEPS = 600
FINETUNE_STEPS = 300
LABELS_PER_CLASS = (2, 5, 10, None)  # None: every labelled target training image
VARIANTS = ("scratch", "transfer", "transfer_frozen", "transfer_widened")
LR = 1e-3


def get_config() -> dict:
    """The domain pair and model of the experiment (ExperimentConfig keys)."""
    return {"source": "digits/source", "target": "digits/rotate", "model": "lenet", "model_kwargs": TARGET_KWARGS}


def source_model(results_dir: Path, seed: int, steps: int = SOURCE_STEPS, force: bool = False) -> tuple[Any, dict, dict]:
    """The trained source LeNet of ``seed``: ``(model, variables, meta)`` (trained once, then
    restored; a saved model whose settings differ from this file's is refused)."""
    import json

    import jax
    import optax

    from da_framework.data.registry import get_domain
    from da_framework.models.registry import make_model
    from da_framework.transfer import restore_model, save_model
    from da_framework.transfer.finetune import accuracy, fit, split_arrays

    model = make_model("lenet", 10, None, **SOURCE_KWARGS)
    from da_framework.config import ConfigError

    path = Path(results_dir) / "digits_transfer_wider" / f"source_seed{seed}_steps{steps}"
    settings = {"model": "lenet", "model_kwargs": SOURCE_KWARGS, "steps": steps, "seed": seed, "lr": LR}
    if (path / "variables").is_dir() and not force:
        variables, meta = restore_model(path)
        saved = {k: meta.get(k) for k in settings}
        if json.dumps(saved, sort_keys=True) != json.dumps(settings, sort_keys=True):
            raise ConfigError(f"saved source model {path} was trained with {saved}, not {settings}; "
                              "rerun with --force to retrain it, or use another --results-dir")
        return model, variables, meta
    source = get_domain("digits/source")
    x, y = split_arrays(source, "train")
    variables = model.init(jax.random.key(10_000 + seed), x[:2])
    variables = fit(model, variables, optax.adam(LR), x, y, steps, jax.random.key(20_000 + seed), batch_size=64)
    xt, yt = split_arrays(source, "test")
    meta = {**settings, "source_test_accuracy": accuracy(model, variables, xt, yt)}
    save_model(path, variables, meta, overwrite=True)
    return model, variables, meta


def finetune_target(
    variant: str, source_params: dict | None, per_class: int | None, seed: int, steps: int = FINETUNE_STEPS
) -> tuple[Any, dict, dict]:
    """Fine-tunes the wider target model (``variant`` of :data:`VARIANTS`) on few ``digits/rotate`` labels.

    Returns:
      ``(model, variables, info)`` with the transfer report summary and labelled-set size in ``info``.
    """
    import jax
    import optax

    from da_framework.data.registry import get_domain
    from da_framework.models.registry import make_model
    from da_framework.transfer import transfer_params
    from da_framework.transfer.finetune import few_labels, fit, split_arrays
    from da_framework.transfer.freezing import discriminative_lr, freeze

    model = make_model("lenet", 10, TARGET_BOTTLENECK, **TARGET_KWARGS)
    x, y = split_arrays(get_domain("digits/rotate"), "train")
    idx = few_labels(y, per_class, seed)
    params = model.init(jax.random.key(30_000 + seed), x[:2])["params"]
    info: dict[str, Any] = {"labelled": len(idx)}
    if variant != "scratch":
        params, report = transfer_params(source_params, params, include=r"^backbone/", widen=variant == "transfer_widened")
        info["transfer"] = report.summary()
    if variant in ("scratch", "transfer_widened"):
        tx = optax.adam(LR)
    elif variant == "transfer":
        tx = discriminative_lr(optax.adam, params, [(r"^backbone/Conv_", 0.1)], base_lr=LR)
    elif variant == "transfer_frozen":
        tx = freeze(optax.adam(LR), params, trainable=[r"^backbone/Dense_", r"^bottleneck/", r"^head/"])
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    variables = fit(model, {"params": params}, tx, x[idx], y[idx], steps, jax.random.key(40_000 + seed), batch_size=32)
    return model, variables, info


def run(results_dir: Path, seeds: list[int], steps: int | None, force: bool = False) -> list[dict]:
    """Every (labels per class, variant, seed); ``steps`` overrides the fine-tuning steps.

    Writes ``<results_dir>/digits_transfer_wider/rows.json`` and returns the rows plus one
    mean row per (labels per class, variant).
    """
    import json

    import numpy as np

    from da_framework.data.registry import get_domain
    from da_framework.transfer.finetune import accuracy, split_arrays

    xt, yt = split_arrays(get_domain("digits/rotate"), "test")
    rows = []
    for seed in seeds:
        src_model, src_vars, meta = source_model(results_dir, seed, force=force)
        src_on_target = accuracy(src_model, src_vars, xt, yt)
        for per_class in LABELS_PER_CLASS:
            for variant in VARIANTS:
                model, variables, info = finetune_target(variant, src_vars["params"], per_class, seed, steps or FINETUNE_STEPS)
                rows.append({
                    "labels_per_class": "all" if per_class is None else per_class,
                    "labelled": info["labelled"],
                    "variant": variant,
                    "seed": seed,
                    "target_test_accuracy": round(accuracy(model, variables, xt, yt), 4),
                    "source_model_on_target": round(src_on_target, 4),
                    "source_test_accuracy": round(float(meta["source_test_accuracy"]), 4),
                })  # fmt: skip
    out = Path(results_dir) / "digits_transfer_wider"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    means = []
    for per_class in dict.fromkeys(r["labels_per_class"] for r in rows):
        for variant in VARIANTS:
            accs = [r["target_test_accuracy"] for r in rows if r["labels_per_class"] == per_class and r["variant"] == variant]
            means.append({"labels_per_class": per_class, "variant": variant, "seeds": len(accs),
                          "mean_acc": round(float(np.mean(accs)), 4), "std_acc": round(float(np.std(accs)), 4)})  # fmt: skip
    (out / "summary.json").write_text(json.dumps(means, indent=1))
    return means
