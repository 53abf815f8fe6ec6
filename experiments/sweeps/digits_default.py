"""The embedded default benchmark: every method x 3 digits shifts x 3 seeds.

Run:    da bench digits_default --results-dir results
Report: da report results/digits_default
"""


def get_sweep() -> dict:
    """Sweep of the closing note of issue 6 (small LeNet, 500 steps)."""
    return {
        "name": "digits_default",
        "base": {
            "steps": 500,
            "model": "lenet",
            "model_kwargs": {"channels": (16, 32), "dense": 256},
            "batch_size": 64,
            "eval_every": 100,
            "log_every": 50,
        },
        "methods": ["source_only", "dann", "dan"],
        "pairs": [("digits/source", "digits/rotate"), ("digits/source", "digits/scale"), ("digits/source", "digits/blur")],
        "seeds": [0, 1, 2],
        "checkpoint_every": 100,
    }
