"""Transfer-Learning-Library's Office-31 protocol (ResNet-50, ImageNet weights) as config values.

The sweep ``experiments/sweeps/office31_tllib.py`` and the experiment
``experiments/office31_tllib.py`` are built from :func:`office31_base` and
:data:`METHOD_SETTINGS`; docs/office31.md holds tllib's published table beside an empty column
for ours (not run here: these machines have no Office-31 copy and no ImageNet weights).

Where each choice comes from (tllib = thuml/Transfer-Learning-Library,
``examples/domain_adaptation/image_classification/``: the argparse defaults of ``dann.py``,
``cdan.py``, ``mcc.py``, ``mdd.py`` (72d4799e), ``jan.py`` (09d0eb81), ``bsp.py`` (2e984d32),
``afn.py`` (0ab2435c), and the Office-31 lines of ``mdd.sh`` (a6d9a2bb) and of the README, which
pass only ``-s/-t -a resnet50 --epochs 20 --seed``):

- backbone ``resnet50`` in torchvision's layout, started from the user's torchvision V1
  ``.pth`` (``model_kwargs={"pretrained": path}``, :mod:`da_framework.transfer.pretrained`),
  ImageNet mean/std normalisation (the ``office31/*`` domains' default), head dropped;
- bottleneck ``Linear(2048, 256) -> BatchNorm1d -> ReLU`` (``ImageClassifier``):
  ``bottleneck_dim=256, bottleneck_norm="batch"``; the backbone trains at 0.1x the rate of
  the bottleneck, the head and the adaptation terms (``ImageClassifier.get_parameters``):
  ``lr_multipliers={"^model/backbone/": 0.1}``;
- SGD, momentum 0.9, Nesterov, weight decay 1e-3 (added to the gradient), lr 0.01,
  ``LambdaLR`` lr * (1 + 0.001 step)^-0.75 (``inv:0.001``), batch 32 per domain,
  20 epochs x 1,000 iterations = 20,000 steps, evaluation every epoch (1,000 steps);
- training images: resize 256, random resized crop 224 (scale 0.08-1), horizontal flip;
  test: resize 256, centre crop 224 (tllib's ``default`` resizing: the ``office31/*`` domains);
- the target's unlabelled training images are its test images (no split), as in tllib.

Per-method settings (:data:`METHOD_SETTINGS`, from the argparse defaults above):
CDAN as DANN; MCC lr 0.005, batch 36, temperature 2.5; JAN lr 0.003, ``inv:0.0003``, weight
decay 5e-4, 500 iterations x 20 epochs; MDD bottleneck 1024, lr 0.004, ``inv:0.0002``, weight
decay 5e-4, margin 4; BSP lr 0.003, BSP weight 2e-4 on DANN; AFN plain SGD (no momentum) at lr
0.001 constant, weight decay 5e-4, bottleneck 1000, 500 x 20 iterations, feature-norm weight
0.05 (delta 1).

Known differences, not closed here (each can move the numbers):

- tllib selects the best epoch on the target test set (an oracle); a run here reports its last
  step, with every epoch's target accuracy in its history (``da report`` shows the oracle pick);
- AFN: tllib uses random crops without resizing (``ran.crop``), a
  ``Linear -> BatchNorm1d -> ReLU -> Dropout(0.5)`` bottleneck and separate source / target
  forward passes (separate BatchNorm statistics); here the shared pipeline, the BatchNorm
  bottleneck without dropout and one joint forward;
- BSP: tllib first trains 3 epochs on the source only (``--pretrain-epochs 3``); not done here;
- MDD: tllib's adversarial and main heads are 1024-wide two-layer heads; here the ``mdd``
  term's own head on the bottleneck features;
- SHOT (Liang et al., ICML 2020) is not in tllib's image-classification table and its two-stage
  source-free protocol (source training, then target-only training with a frozen head and
  pseudo-labels) is not implemented; ``shot_im`` here is its information-maximisation loss
  added to source training in one stage, a different method;
- tllib's gradient-reversal coefficient ramps up over its first 1,000 iterations
  (``WarmStartGradientReverseLayer(max_iters=1000)``); the adversarial terms here ramp over
  the whole run (p = step / steps, gamma 10);
- initialisation of the new layers: flax defaults (PyTorch: uniform +-1/sqrt(fan_in)).
"""

from __future__ import annotations

from typing import Any

OFFICE31_DOMAINS = ("amazon", "dslr", "webcam")
# tllib's table order: A->W, D->W, W->D, A->D, D->A, W->A.
OFFICE31_PAIRS = (("amazon", "webcam"), ("dslr", "webcam"), ("webcam", "dslr"),
                  ("amazon", "dslr"), ("dslr", "amazon"), ("webcam", "amazon"))

# Settings that differ from DANN's, per method preset (da list); JAN/AFN run 500 x 20 steps.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "source_only": {},
    "dann": {},
    "cdan": {},
    "mcc": {"learning_rate": 0.005, "batch_size": 36},
    "jan": {"learning_rate": 0.003, "lr_schedule": "inv:0.0003", "weight_decay": 5e-4, "steps": 10_000},
    "mdd": {"learning_rate": 0.004, "lr_schedule": "inv:0.0002", "weight_decay": 5e-4, "bottleneck_dim": 1024},
    "bsp": {"learning_rate": 0.003},
    "afn": {"learning_rate": 0.001, "lr_schedule": "constant", "momentum": 0.0, "weight_decay": 5e-4,
            "bottleneck_dim": 1000, "steps": 10_000},
    "shot_im": {},
}


def office31_base(weights: str) -> dict[str, Any]:
    """ExperimentConfig overrides of tllib's Office-31 protocol shared by every method (DANN's).

    Args:
      weights: path of a torchvision ResNet-50 ``state_dict`` (``.pth``) or ``.safetensors``.
    """
    return {
        "model": "resnet50",
        "model_kwargs": {"pretrained": weights},
        "bottleneck_dim": 256,
        "bottleneck_norm": "batch",
        "lr_multipliers": {"^model/backbone/": 0.1},
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "lr_schedule": "inv:0.001",
        "weight_decay": 1e-3,
        "batch_size": 32,
        "steps": 20_000,
        "eval_every": 1_000,
        "log_every": 100,
    }


def office31_config(source: str, target: str, method: str, weights: str) -> dict[str, Any]:
    """The full overrides of one tllib Office-31 run: ``office31/<source> -> office31/<target>``.

    Raises:
      KeyError: for a domain other than amazon/dslr/webcam or a method without settings here.
    """
    for d in (source, target):
        if d not in OFFICE31_DOMAINS:
            raise KeyError(f"unknown Office-31 domain {d!r}; valid: {', '.join(OFFICE31_DOMAINS)}")
    if method not in METHOD_SETTINGS:
        raise KeyError(f"no tllib Office-31 settings for method {method!r}; valid: {', '.join(METHOD_SETTINGS)}")
    return {**office31_base(weights), **METHOD_SETTINGS[method], "method": method,
            "source": f"office31/{source}", "target": f"office31/{target}"}
