"""CIFAR-10 cats/dogs -> birds/airplanes: cross-category transfer of a classifier.

Source task: 3-way {cat, dog, other} on CIFAR-10 train; target task: 3-way {bird,
airplane, other}, the "other" class being the remaining classes, subsampled to balance
(:mod:`da_framework.data.category_tasks`).  The target is trained with
``TARGET_PER_CLASS`` labelled images per class, two ways with the same steps:

* ``scratch``: a ResNet-8 from a random initialisation;
* ``finetune``: the backbone of the cats/dogs classifier (trained ``SOURCE_STEPS``
  steps on the full source task), with a fresh head, all weights trained.

Metric: accuracy on the target task cut from CIFAR-10 test (1000 bird + 1000 airplane +
1000 other images).

Needs the prepared tfds ``cifar10`` (array_record) in the data dir; otherwise the run
stops with :class:`da_framework.data.catalog.DatasetNotPreparedError` and its ``tfds
build`` command.  Not run here: no CIFAR-10 copy exists on this machine.

Literature: no standard number exists for this exact split; for orientation, a full
ResNet-20 trained on all of CIFAR-10 reaches ~91.7% 10-way test accuracy (He et al.,
CVPR 2016, Table 6).

Run: da run cifar_catsdogs_to_birds_airplanes --seeds 3
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

SOURCE_CLASSES = (3, 5)  # cat, dog
TARGET_CLASSES = (2, 0)  # bird, airplane
TARGET_PER_CLASS = 100
SOURCE_STEPS = 2000
TARGET_STEPS = 500
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def get_config() -> dict:
    """Nominal pairing (for ``da list``); the procedure is :func:`run`."""
    return {"source": "cifar10", "target": "cifar10", "model": "resnet8"}


def _train(model, data, steps: int, seed: int, init_backbone=None):
    import jax
    import jax.numpy as jnp
    import optax

    from da_framework.data.domain import batch_iterator
    from da_framework.train import init_train_state, make_train_step, parse_method

    method = parse_method("source_only")
    tx = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, steps))
    bs = min(BATCH_SIZE, len(data))
    it = batch_iterator(data, bs, seed)
    first = next(it)
    x, y = jnp.asarray(first["image"]), jnp.asarray(first["label"])
    state = init_train_state(jax.random.PRNGKey(seed), model, method, tx, x, x, y)
    if init_backbone is not None:
        params = {**state.params, "model": {**state.params["model"], "backbone": init_backbone}}
        state = state.replace(params=params, opt_state=tx.init(params))
    step = jax.jit(make_train_step(model, method, tx, steps))
    key = jax.random.PRNGKey(seed + 10_000)
    for i in range(steps):
        batch = first if i == 0 else next(it)
        state, _ = step(state, batch, batch, jax.random.fold_in(key, i))
    return state


def _accuracy(model, state, data) -> float:
    import numpy as np

    from da_framework.train.evaluate import make_predict_fn

    predict = make_predict_fn(model)
    variables = {"params": state.params["model"], **state.model_state}
    correct = 0
    for s in range(0, len(data), 500):
        logits, _ = predict(variables, data.arrays["image"][s : s + 500])
        correct += int(np.sum(np.argmax(np.asarray(logits), -1) == data.arrays["label"][s : s + 500]))
    return correct / len(data)


def run(results_dir: Path, seeds: list[int], steps: int | None, data_dir: str | None = None) -> list[dict]:
    """Scratch vs fine-tuned target accuracy per seed; mean/std rows are returned."""
    from da_framework.data.category_tasks import load_task
    from da_framework.data.catalog import cifar10
    from da_framework.models.registry import make_model

    domain = cifar10(data_dir)  # raises DatasetNotPreparedError with the tfds build command
    target_steps = steps or TARGET_STEPS
    model = make_model("resnet8", num_classes=3, bottleneck_dim=None, norm="group")
    rows = []
    for seed in seeds:
        source = load_task(domain.splits["train"], SOURCE_CLASSES, seed)
        target = load_task(domain.splits["train"], TARGET_CLASSES, seed, limit=TARGET_PER_CLASS)
        test = load_task(domain.splits["test"], TARGET_CLASSES, 0)
        src_state = _train(model, source, SOURCE_STEPS, seed)
        for name, init in (("scratch", None), ("finetune", src_state.params["model"]["backbone"])):
            acc = _accuracy(model, _train(model, target, target_steps, seed, init), test)
            rows.append({"method": name, "seed": seed, "target_test_accuracy": acc})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cifar_catsdogs_to_birds_airplanes.json").write_text(json.dumps(rows, indent=1))
    table = []
    for name in ("scratch", "finetune"):
        accs = [r["target_test_accuracy"] for r in rows if r["method"] == name]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        mean = statistics.mean(accs)
        table.append({"method": name, "seeds": len(accs), "target test acc": f"{mean:.3f} ± {std:.3f}"})
    return table
