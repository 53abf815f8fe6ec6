"""DomainBed's training protocol for its MNIST datasets, as config values (one held-out environment).

From facebookresearch/DomainBed (Gulrajani & Lopez-Paz, ICLR 2021): ``hparams_registry.py``
(defaults for ``SMALL_IMAGES`` = RotatedMNIST, ColoredMNIST: Adam, ``lr`` 1e-3,
``weight_decay`` 0, ``batch_size`` 64 per training environment), ``datasets.py``
(``N_STEPS = 5001``, ``CHECKPOINT_FREQ = 100``) and ``networks.py`` (``MNIST_CNN``, here the
``mnist_cnn`` backbone, with one linear layer on top).  ``source`` is every environment but
the test one, in DomainBed's order; ``target`` is the test environment, whose ``test`` split
is its in-split (the number DomainBed reports; :mod:`da_framework.data.environments`).

Known differences, not closed here: the step also forwards a batch of the test environment
that no DG term reads (compute only: ``mnist_cnn`` and ``lenet`` have no batch statistics);
evaluation reports the last step (DomainBed's three model-selection rules and its
20 x 3 hyper-parameter sweep come later); initialisation is flax's, not PyTorch's.
"""

from __future__ import annotations

from typing import Any

from da_framework.data.dg_digits import SHIFT_ENVIRONMENTS
from da_framework.data.dg_mnist import COLOUR_FLIP, ROTATIONS
from da_framework.errors import UserError

ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "rmnist": tuple(f"rmnist/{a}" for a in ROTATIONS),
    "cmnist": tuple(f"cmnist/{e}" for e in COLOUR_FLIP),
    "rdigits": tuple(f"rdigits/{a}" for a in ROTATIONS),
    "digits_env": tuple(f"digits_env/{s}" for s in SHIFT_ENVIRONMENTS),
}


def domainbed_dg(family: str, test_env: str, steps: int = 5001) -> dict[str, Any]:
    """ExperimentConfig overrides: train on every environment of ``family`` but ``test_env``, test on it.

    Args:
      family: ``"rmnist"``, ``"cmnist"``, ``"rdigits"`` or ``"digits_env"``.
      test_env: the held-out environment's name without the family, e.g. ``"0"`` or ``"-90%"``.
      steps: training steps (DomainBed: 5001).

    Raises:
      UserError: for an unknown family or environment (the message lists the valid ones).
    """
    if family not in ENVIRONMENTS:
        raise UserError(f"unknown DG family {family!r}; valid: {', '.join(ENVIRONMENTS)}")
    names = ENVIRONMENTS[family]
    test = f"{family}/{test_env}"
    if test not in names:
        raise UserError(f"{family} has no environment {test_env!r}; valid: {', '.join(n.split('/', 1)[1] for n in names)}")
    return {
        "source": ",".join(n for n in names if n != test),
        "target": test,
        "model": "mnist_cnn",
        "bottleneck_dim": None,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "batch_size": 64,
        "steps": steps,
        "eval_every": 100,
    }
