"""Real MNIST <-> USPS, seven methods, three seeds, on the shortened tllib digits protocol.

Run:    DA_DATA_DIR=../shared/data da bench digits_real_short --results-dir benchmarks/results
Report: da report benchmarks/results/digits_real_short

The base is the short protocol of da_framework/bench/protocols.py (its docstring lists every
protocol choice, its tllib source and the known differences): ``lenet_tllib`` with (x - 0.5) / 0.5 inputs, a 256-d
bottleneck, 5,000 steps of batch 64 per domain, SGD (momentum 0.9, Nesterov) with weight
decay 1e-3, lr 0.01 with ``inv:0.001``.  One base serves both pairs, so USPS -> MNIST runs
at lr 0.01 here where tllib's scripts use 0.1 (experiments/usps_mnist_short.py has 0.1);
per-method tllib settings (ERM/DAN/MDD weight decay and lr-gamma) are not applied.

Not run yet: no accuracy has been measured on this sweep.
"""

from da_framework.bench.protocols import tllib_digits


def get_sweep() -> dict:
    """source_only, dann, dan, jan, cdan, mcc, mdd x (mnist -> usps, usps -> mnist) x seeds 0, 1, 2."""
    return {
        "name": "digits_real_short",
        "base": {k: v for k, v in tllib_digits("mnist", "usps", short=True).items() if k not in ("source", "target")},
        "methods": ["source_only", "dann", "dan", "jan", "cdan", "mcc", "mdd"],
        "pairs": [("mnist", "usps"), ("usps", "mnist")],
        "seeds": [0, 1, 2],
        "checkpoint_every": 500,
    }
