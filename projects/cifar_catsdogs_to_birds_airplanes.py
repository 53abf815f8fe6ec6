"""CIFAR-10 cats/dogs -> birds/airplanes: cross-category transfer of a classifier.

Two data paths (``DA_CIFAR_DATASET``: ``auto`` (default), ``cifar10_4class`` or ``cifar10``;
``auto`` takes ``cifar10_4class`` when its file is in the data dir, else tfds ``cifar10``):

**cifar10_4class** (the local file ``<data_dir>/cifar10_4class/cifar10_4class.npz``, domain
:mod:`da_framework.data.local_cifar`; only airplane, bird, cat, dog exist there, so there is no
"other" class and the task is two-way):

* source task: cat vs dog, every cat/dog image of the domain's ``train`` split (1,800 + 1,800),
  ``LOCAL_SOURCE_STEPS`` = 1000 Adam steps (batch 64, lr 1e-3, cosine decay);
* target task: bird vs airplane, with ``LOCAL_BUDGETS`` = 10, 100 and all (1,800)
  labelled ``train`` images per class, the same draw for both variants of a seed;
* ``scratch``: a ResNet-8 (GroupNorm) from a random initialisation; ``finetune``: the cat/dog
  backbone with a fresh two-way head, all weights trained; both ``LOCAL_TARGET_STEPS`` = 300
  steps (fewer than the tfds path's 2000/500, to fit two busy CPU cores);
* metric: bird-vs-airplane accuracy on the 1,000 + 1,000 test images of these classes
  (chance 0.5); the source model's cat-vs-dog test accuracy is recorded too.

**Caveat**: the pixels of that file are JPEG-compressed (libjpeg quality 75) copies of
CIFAR-10, not bit-exact (its README.md); every row this project writes or prints from it
carries :data:`~da_framework.data.local_cifar.PIXEL_CAVEAT`.

**cifar10** (a prepared tfds ``cifar10`` in the data dir; the original protocol, unchanged):
source task 3-way {cat, dog, other}, target task 3-way {bird, airplane, other}, "other" being
the remaining classes subsampled to balance (:mod:`da_framework.data.category_tasks`),
``TARGET_PER_CLASS`` = 100 labelled target images per class, ``SOURCE_STEPS`` = 2000 /
``TARGET_STEPS`` = 500 steps; test: 1000 bird + 1000 airplane + 1000 other CIFAR-10 test images.  Without the data the run stops with
:class:`da_framework.data.catalog.DatasetNotPreparedError` and its ``tfds build`` command.

Literature: no standard number exists for either split (nor for any cat/dog -> bird/airplane
transfer on CIFAR-10 that we know of), so the results have no published anchor.

Run: ``DA_DATA_DIR=../shared/data da run cifar_catsdogs_to_birds_airplanes --seeds 3``
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

SOURCE_CLASSES = (3, 5)  # cat, dog (CIFAR-10 ids)
TARGET_CLASSES = (2, 0)  # bird, airplane (CIFAR-10 ids)
TARGET_PER_CLASS = 100  # tfds path
LOCAL_SOURCE_CLASSES = (2, 3)  # cat, dog in cifar10_4class (0 airplane, 1 bird, 2 cat, 3 dog)
LOCAL_TARGET_CLASSES = (1, 0)  # bird, airplane in cifar10_4class
LOCAL_BUDGETS = (10, 100, None)  # labelled target images per class; None: all (1,800)
SOURCE_STEPS, TARGET_STEPS = 2000, 500  # tfds path
LOCAL_SOURCE_STEPS, LOCAL_TARGET_STEPS = 1000, 300  # cifar10_4class path (affordable on 2 CPU cores)
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
DATASETS = ("auto", "cifar10_4class", "cifar10")


def get_config() -> dict:
    """Nominal pairing (for ``da list``); the procedure is :func:`run`."""
    return {"source": "cifar10_4class", "target": "cifar10_4class", "model": "resnet8"}


def dataset_choice(choice: str | None = None, data_dir: str | None = None) -> str:
    """``"cifar10_4class"`` or ``"cifar10"`` from ``choice`` or ``$DA_CIFAR_DATASET`` (``auto``: local file if present)."""
    from da_framework.errors import UserError

    choice = choice or os.environ.get("DA_CIFAR_DATASET", "auto")
    if choice not in DATASETS:
        raise UserError(f"DA_CIFAR_DATASET must be one of {', '.join(DATASETS)}; got {choice!r}")
    if choice != "auto":
        return choice
    from da_framework.data.local import has_local

    return "cifar10_4class" if has_local("cifar10_4class", data_dir) else "cifar10"


def two_way_task(source, classes: tuple[int, int], seed: int, limit: int | None = None):
    """Images of ``classes`` from an in-memory split, relabelled 0 (``classes[0]``) / 1.

    ``limit``: keep at most this many per class, drawn with ``numpy.random.default_rng(seed + 1)``
    (None: all).  Returns an ``ArraySource`` in the split's order.
    """
    import numpy as np

    from da_framework.data.domain import ArraySource

    labels = np.asarray(source.arrays["label"])
    picks = []
    rng = np.random.default_rng(seed + 1)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        picks.append(idx if limit is None else np.sort(rng.permutation(idx)[:limit]))
    idx = np.sort(np.concatenate(picks))
    task = (labels[idx] == classes[1]).astype(np.int32)
    return ArraySource({"image": np.asarray(source.arrays["image"])[idx], "label": task})


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


def _tasks(dataset: str, data_dir: str | None, seed: int):
    """``(source task, test task of the target, [(budget, labelled target task)], num_classes, caveat)``."""
    if dataset == "cifar10_4class":
        from da_framework.data.local_cifar import PIXEL_CAVEAT, cifar10_4class_domain

        d = cifar10_4class_domain(data_dir)
        train, test = d.splits["train"], d.splits["test"]
        source = two_way_task(train, LOCAL_SOURCE_CLASSES, seed)
        source_test = two_way_task(test, LOCAL_SOURCE_CLASSES, 0)
        targets = [(b, two_way_task(train, LOCAL_TARGET_CLASSES, seed, b)) for b in LOCAL_BUDGETS]
        return source, source_test, two_way_task(test, LOCAL_TARGET_CLASSES, 0), targets, 2, PIXEL_CAVEAT
    from da_framework.data.catalog import cifar10
    from da_framework.data.category_tasks import load_task

    d = cifar10(data_dir)  # raises DatasetNotPreparedError with the tfds build command
    source = load_task(d.splits["train"], SOURCE_CLASSES, seed)
    source_test = load_task(d.splits["test"], SOURCE_CLASSES, 0)
    target = load_task(d.splits["train"], TARGET_CLASSES, seed, limit=TARGET_PER_CLASS)
    return source, source_test, load_task(d.splits["test"], TARGET_CLASSES, 0), [(TARGET_PER_CLASS, target)], 3, None


def run(
    results_dir: Path, seeds: list[int], steps: int | None, data_dir: str | None = None, dataset: str | None = None
) -> list[dict]:
    """Scratch vs fine-tuned target accuracy per (seed, label budget); mean/std rows are returned.

    ``steps`` overrides the target steps (the source keeps its steps).  Writes
    ``<results_dir>/cifar_catsdogs_to_birds_airplanes.json`` (one row per run, each with the
    dataset, wall seconds and, for ``cifar10_4class``, the pixel caveat).
    """
    import time

    from da_framework.models.registry import make_model

    dataset = dataset_choice(dataset, data_dir)
    local = dataset == "cifar10_4class"
    source_steps = LOCAL_SOURCE_STEPS if local else SOURCE_STEPS
    target_steps = steps or (LOCAL_TARGET_STEPS if local else TARGET_STEPS)
    rows, t_start = [], time.time()
    for seed in seeds:
        source, source_test, test, targets, k, caveat = _tasks(dataset, data_dir, seed)
        model = make_model("resnet8", num_classes=k, bottleneck_dim=None, norm="group")
        t0 = time.time()
        src_state = _train(model, source, source_steps, seed)
        src_acc = _accuracy(model, src_state, source_test)
        src_s = time.time() - t0
        for budget, target in targets:
            for name, init in (("scratch", None), ("finetune", src_state.params["model"]["backbone"])):
                t0 = time.time()
                acc = _accuracy(model, _train(model, target, target_steps, seed, init), test)
                rows.append({"dataset": dataset, "method": name, "seed": seed,
                             "labels_per_class": "all" if budget is None else budget, "labelled": len(target),
                             "target_test_accuracy": round(acc, 4), "source_test_accuracy": round(src_acc, 4),
                             "source_steps": source_steps, "target_steps": target_steps,
                             "source_wall_s": round(src_s, 1), "target_wall_s": round(time.time() - t0, 1),
                             **({"pixels": caveat} if caveat else {})})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cifar_catsdogs_to_birds_airplanes.json").write_text(json.dumps(rows, indent=1))
    table = []
    for budget in dict.fromkeys(r["labels_per_class"] for r in rows):
        for name in ("scratch", "finetune"):
            accs = [r["target_test_accuracy"] for r in rows if r["method"] == name and r["labels_per_class"] == budget]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            table.append({"dataset": dataset, "labels per class": budget, "method": name, "seeds": len(accs),
                          "target test acc": f"{statistics.mean(accs):.3f} ± {std:.3f}",
                          **({"pixels": "JPEG q75, not bit-exact CIFAR-10"} if dataset == "cifar10_4class" else {})})  # fmt: skip
    if dataset == "cifar10_4class":
        from da_framework.data.local_cifar import PIXEL_CAVEAT

        print(f"caveat: {PIXEL_CAVEAT}; total wall {time.time() - t_start:.0f} s", flush=True)
    return table
