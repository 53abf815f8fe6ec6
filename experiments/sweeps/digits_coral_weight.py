"""Tuning a loss weight with a validator: CORAL's weight on the embedded digits shifts.

Run:    da bench digits_coral_weight --results-dir benchmarks/results
Report: da report benchmarks/results/digits_coral_weight                 # selects by source val
        da report benchmarks/results/digits_coral_weight --select dev_risk

In the default sweep (``digits_default``) CORAL at weight 1 equals source-only: its loss,
scaled by 1/(4 d^2) over d = 256 unnormalised features, stays below 1e-2.  Here the grid
key ``weight:coral`` sets the weight of the ``coral`` term (source-only, which has no such
term, runs once per seed), and ``da report`` picks one weight per pair and seed with the
chosen validator.  Same protocol and network as ``digits_default``.
"""


def get_sweep() -> dict:
    """CORAL weights 1 ... 10^6 on two shifts, 3 seeds, with source-only as the baseline."""
    return {
        "name": "digits_coral_weight",
        "base": {
            "model": "lenet",
            "model_kwargs": {"channels": (16, 32), "dense": 256},
            "eval_every": 100,
            "log_every": 50,
        },
        "methods": ["source_only", "coral"],
        "pairs": [("digits/source", "digits/scale"), ("digits/source", "digits/rotate")],
        "seeds": [0, 1, 2],
        "grid": {"weight:coral": [1, 100, 1000, 10000, 100000, 1000000]},
        "checkpoint_every": 100,
    }
