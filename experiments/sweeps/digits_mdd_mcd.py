"""Tuning loss hyper-parameters: MDD's margin and adversarial coefficient, MCD's discrepancy weight.

Run:    da bench digits_mdd_mcd --results-dir benchmarks/results
Report: da report benchmarks/results/digits_mdd_mcd

With their default hyper-parameters both stay at source-only level in ``digits_default``.
Grid keys ``<loss>.<name>`` set a loss hyper-parameter in every method that has the loss;
the product is taken per method over its own keys (MDD: 2 margins x 3 coefficients; MCD:
3 discrepancy weights; source-only once).  Same protocol and network as ``digits_default``.
"""


def get_sweep() -> dict:
    """MDD (margin, max GRL coefficient) and MCD (discrepancy weight) on two shifts, 3 seeds."""
    return {
        "name": "digits_mdd_mcd",
        "base": {
            "model": "lenet",
            "model_kwargs": {"channels": (16, 32), "dense": 256},
            "eval_every": 100,
            "log_every": 50,
        },
        "methods": ["source_only", "mdd", "mcd"],
        "pairs": [("digits/source", "digits/scale"), ("digits/source", "digits/rotate")],
        "seeds": [0, 1, 2],
        "grid": {"mdd.margin": [2.0, 4.0], "mdd.max_coeff": [0.1, 0.3, 1.0], "mcd.discrepancy_weight": [1.0, 3.0, 10.0]},
        "checkpoint_every": 100,
    }
