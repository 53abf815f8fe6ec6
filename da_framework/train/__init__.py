"""Training core: methods as weighted loss terms, the pure step, the loop."""

from da_framework.train.evaluate import classification_metrics, evaluate, make_predict_fn
from da_framework.train.loop import NonFiniteLossError, RunResult, make_optimizer, train
from da_framework.train.method import PRESETS, LossTerm, Method, parse_method
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
