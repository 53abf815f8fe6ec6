"""The embedded default benchmark: every classifier-training method x 3 digits shifts x 3 seeds.

Run:    da bench digits_default --results-dir results
Report: da report results/digits_default

The optimisation protocol is ExperimentConfig's default (the standard DANN protocol: SGD with
Nesterov momentum 0.9, lr 0.01 decayed as 1/(1+10p)^0.75, no bottleneck, 500 steps of 64
source + 64 target images), identical for every method; the LeNet is narrowed to 16/32
channels and 256 features for the 16x16 images.
"""

METHODS = [
    "source_only",
    "dann",
    "dan",
    "jan",
    "coral",
    "cmd",
    "swd",
    "mcc",
    "bnm",
    "entropy",
    "shot_im",
    "l2sp",
    "cdan",
    "cdan_e",
    "mdd",
    "mcd",
    "fixmatch",
    "mean_teacher",
    "bss",  # last: its per-step SVD makes it the slowest on CPU
]


def get_sweep() -> dict:
    """Sweep of the closing notes of issues 3 and 6."""
    return {
        "name": "digits_default",
        "base": {
            "model": "lenet",
            "model_kwargs": {"channels": (16, 32), "dense": 256},
            "eval_every": 100,
            "log_every": 50,
        },
        "methods": METHODS,
        "pairs": [("digits/source", "digits/scale"), ("digits/source", "digits/rotate"), ("digits/source", "digits/blur")],
        "seeds": [0, 1, 2],
        "checkpoint_every": 100,
    }
