"""Transfer-Learning-Library's digits protocol (MNIST <-> USPS) as config values, in one place.

The experiments ``experiments/{mnist_usps,usps_mnist}_{tllib,short}.py`` and the sweep
``experiments/sweeps/digits_real_short.py`` are :func:`tllib_digits` with their pair and length.

Protocol and where each choice comes from (tllib = thuml/Transfer-Learning-Library, examples/domain_adaptation/image_classification/;
the ``# Digits`` lines of ``erm.sh``, ``dann.sh``, ``dan.sh`` and the argparse defaults of
``dann.py``/``cdan.py``/``mcc.py``, as stored at commits 09d0eb81 (``*.sh``) and 72d4799e (``*.py``)):

- data: ``mnist`` (full MNIST) and ``usps``; 28x28 gray, USPS resized 16 -> 28 (scripts: ``--resize-size 28
  --train-resizing 'res.'``), no augmentation (``--no-hflip``), evaluated on the target
  test split (2,007 USPS / 10,000 MNIST images);
- input normalisation ``(x - 0.5) / 0.5`` (``--norm-mean 0.5 --norm-std 0.5``): the
  ``input_mean``/``input_std`` model kwargs;
- backbone ``lenet_tllib`` (``-a lenet --no-pool --scratch``; ``tllib/vision/models/digits.py``),
  then a 256-d bottleneck (``ImageClassifier``'s ``--bottleneck-dim 256`` default of
  dann.py/cdan.py/mcc.py/dan.py) and a linear head;
- batch 128 per domain (``-b 128``); the short protocol: 64;
- optimiser ``sgd``: momentum 0.9, Nesterov, weight decay 1e-3 added to the gradient
  (dann.py, erm.py, mdd.py: ``SGD(..., momentum=0.9, weight_decay=wd, nesterov=True)``; wd 1e-3 is the
  default of dann.py/cdan.py/mcc.py);
- learning rate 0.01 on MNIST -> USPS and 0.1 on USPS -> MNIST (``--lr`` in erm.sh, dann.sh, dan.sh;
  issue 15 says mdd.sh uses 0.01 on both, not checked here); schedule ``inv:0.001`` = lr * (1 + 0.001 * step)^-0.75 per step (``LambdaLR``
  with ``--lr-gamma 0.001``, the dann.py/cdan.py/mcc.py default; not the DANN paper's
  (1 + 10 p)^-0.75);
- 50,000 steps (``-i 2500`` iterations x the default ``--epochs 20``); the short protocol: 5,000;
- evaluation every 2,500 steps (tllib validates after every epoch); the short protocol: every 500.

Known differences from tllib, not closed here (each can move the numbers):

- the bottleneck is Dense -> LayerNorm -> ReLU (tllib: Linear -> BatchNorm1d -> ReLU); tllib's
  ERM has no bottleneck and MDD a 1024-d one with 1024-wide heads;
- per-method settings: erm.py/dan.py use wd 5e-4 and lr-gamma 0.0003, mdd.py wd 5e-4,
  lr-gamma 0.0002 (jan.py, mdd.sh not checked); this file has DANN's;
- source/target train sets: the first 90% of each train file (54,000 MNIST / 6,562 USPS;
  the last 10% is the val split); tllib trains on all 60,000 / 7,291;
- initialisation: flax LeCun-normal weights and zero biases (PyTorch: uniform +-1/sqrt(fan_in));
- model selection: tllib reports the best epoch on the target test set (an oracle); ``da run``
  reports the last step;
- the short protocol (5,000 steps of batch 64 instead of 50,000 of 128, to fit a 2-core CPU):
  how far it lands from the full one is not measured yet.

Accuracy: first short-protocol numbers (MNIST -> USPS, seed 0) in docs/real_digits.md.
Data: ``DA_DATA_DIR=../shared/data`` (layout ``<data_dir>/<dataset>/<dataset>.npz``, docs/real_digits.md).
"""

from __future__ import annotations

from typing import Any

# tllib's --lr per (source, target) in erm.sh / dann.sh / dan.sh.
TLLIB_LR = {("mnist", "usps"): 0.01, ("usps", "mnist"): 0.1}


def tllib_digits(source: str, target: str, short: bool = False) -> dict[str, Any]:
    """ExperimentConfig overrides of tllib's digits protocol for ``source -> target``.

    Args:
      source: ``"mnist"`` or ``"usps"``.
      target: the other one.
      short: 5,000 steps of batch 64 (fits a 2-core CPU) instead of tllib's 50,000 of 128.
    """
    return {
        "source": source,
        "target": target,
        "model": "lenet_tllib",
        "model_kwargs": {"input_mean": 0.5, "input_std": 0.5},
        "bottleneck_dim": 256,
        "batch_size": 64 if short else 128,
        "optimizer": "sgd",
        "learning_rate": TLLIB_LR[(source, target)],
        "lr_schedule": "inv:0.001",
        "weight_decay": 1e-3,
        "steps": 5000 if short else 50000,
        "eval_every": 500 if short else 2500,
    }


# The methods of tllib's digits table that run from their preset names, most wanted first.
TLLIB_SWEEP_METHODS = ("dann", "cdan", "mcc", "mdd", "source_only", "dan", "jan", "bsp")


def tllib_digits_sweep(source: str, target: str, steps: int | None = None) -> dict[str, Any]:
    """A ``da bench`` sweep of tllib's full digits protocol on ``source -> target``: the methods of
    :data:`TLLIB_SWEEP_METHODS` x seeds 0, 1, 2, meant for ``da bench --vmap-seeds`` on a GPU
    (the three seeds of a method as one program, as issue 15 asks).

    tllib's per-method learning rate is kept: MDD runs at 0.01 on both pairs (mdd.sh), the others
    at :data:`TLLIB_LR`.  ``steps`` shortens every run (a smoke test; the sweep's name then says
    so, so its records never mix with the full protocol's).
    """
    base = {k: v for k, v in tllib_digits(source, target, short=False).items() if k not in ("source", "target")}
    name = f"digits_tllib_{source}_{target}"
    if steps is not None:
        base.update(steps=steps, eval_every=max(1, steps // 2))
        name += f"_steps{steps}"
    return {
        "name": name,
        "base": base,
        "methods": list(TLLIB_SWEEP_METHODS),
        "method_settings": {"mdd": {"learning_rate": 0.01}} if base["learning_rate"] != 0.01 else {},
        "pairs": [(source, target)],
        "seeds": [0, 1, 2],
    }


# SHOT's digits scripts (tim-learn/SHOT digit/uda_digit.py, digit.sh): 30 epochs of each phase,
# batch 64; one epoch of the train split here is ceil(n / 64) steps (54,000 MNIST, 6,562 USPS).
SHOT_EPOCH_STEPS = {"mnist": 844, "usps": 103}
# SHOT's u2m source transform, RandomCrop(28, padding=4) then RandomRotation(10): zero padding,
# nearest interpolation, fill 0 (torchvision's defaults), on images in [0, 1] before normalisation.
SHOT_USPS_AUGMENT = "random_crop(pad=4, mode='constant') | random_rotation(max_degrees=10, order=0, mode='constant')"


def shot_digits(source: str, target: str, short: bool = False) -> dict[str, Any]:
    """ExperimentConfig overrides of SHOT's digits protocol (Liang et al., ICML 2020) for ``source -> target``.

    As tim-learn/SHOT ``digit/uda_digit.py`` with ``digit.sh``'s ``--cls_par 0.1`` runs it:
    ``lenet_shot`` (its LeNetBase, 800 features) -> Linear(256) -> BatchNorm1d -> Dropout(0.5)
    (no ReLU; ``feat_bottleneck(type="bn")``) -> a weight-normalised linear head
    (``feat_classifier(type="wn")``); (x - 0.5) / 0.5 inputs; SGD with Nesterov momentum 0.9
    and weight decay 1e-3, lr 0.01 with SHOT's ``lr * (1 + 10 i / T)^-0.75`` over each phase
    (``shot(phase_schedule=True)`` with a constant run schedule), batch 64; 30 source epochs with
    label smoothing 0.1, then 30 target epochs of SHOT (method
    ``cross_entropy(label_smoothing=0.1) + shot(pretrain_steps=..., phase_schedule=True)``).

    Differences from SHOT's code, each stated where it is measured (docs/real_digits.md): the
    last source checkpoint (SHOT keeps the best on the source *test* split); 90% of each train file
    (SHOT: all of it); flax initialisation (SHOT: Xavier-normal linears, Kaiming-uniform convs).
    USPS -> MNIST augments its source batches as SHOT's ``RandomCrop(28, padding=4)`` +
    ``RandomRotation(10)`` do (:data:`SHOT_USPS_AUGMENT`, config key ``source_augment``; the
    target is never augmented, as in SHOT); MNIST -> USPS has no augmentation, as in SHOT.

    Args:
      source: ``"mnist"`` or ``"usps"``.
      target: the other one.
      short: 2,500 source + 2,500 target steps (the CPU protocol of the first SHOT runs)
        instead of 30 epochs of each (28,410 steps).
    """
    pretrain = 2500 if short else 30 * SHOT_EPOCH_STEPS[source]
    augment = {"source_augment": SHOT_USPS_AUGMENT} if source == "usps" else {}
    steps = 5000 if short else pretrain + 30 * SHOT_EPOCH_STEPS[target]
    return {
        "source": source,
        "target": target,
        "method": f"cross_entropy(label_smoothing=0.1) + shot(pretrain_steps={pretrain}, phase_schedule=True)",
        "model": "lenet_shot",
        "model_kwargs": {"input_mean": 0.5, "input_std": 0.5, "head_weight_norm": True, "bottleneck_relu": False,
                         "bottleneck_dropout": 0.5},
        "bottleneck_dim": 256,
        "bottleneck_norm": "batch",
        "batch_size": 64,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "lr_schedule": "constant",
        "weight_decay": 1e-3,
        "steps": steps,
        "eval_every": 500 if short else 1000,
        **augment,
    }
