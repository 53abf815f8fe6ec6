"""Training core: methods as weighted loss terms, the pure step, the loop.

The loop's names (``train``, ``RunResult``, ``NonFiniteLossError``) are imported on first use: the loop picks trainers, and methods with their own trainer
(:mod:`da_framework.methods`) import this package's step, so importing the loop here would
make an import cycle.
"""

from typing import Any

from da_framework.train.evaluate import classification_metrics, evaluate, make_predict_fn
from da_framework.train.method import PRESETS, LossTerm, Method, parse_method
from da_framework.train.optimizers import build_optimizer, make_optimizer
from da_framework.train.parallel import make_mesh, replicate, shard_batch
from da_framework.train.state import TrainState, init_train_state
from da_framework.train.step import make_train_step

__all__ = [
    "PRESETS",
    "LossTerm",
    "Method",
    "NonFiniteLossError",
    "RunResult",
    "TrainState",
    "build_optimizer",
    "classification_metrics",
    "evaluate",
    "init_train_state",
    "make_mesh",
    "make_optimizer",
    "make_predict_fn",
    "make_train_step",
    "parse_method",
    "replicate",
    "shard_batch",
    "train",
]

_FROM_LOOP = ("NonFiniteLossError", "RunResult", "train")


def __getattr__(name: str) -> Any:
    """Imports the loop's public names on first access (see the module docstring)."""
    if name in _FROM_LOOP:
        from da_framework.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
