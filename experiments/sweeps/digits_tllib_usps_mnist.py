"""USPS -> MNIST on tllib's full digits protocol: eight methods x seeds 0, 1, 2 (a GPU job).

Run:    DA_DATA_DIR=../shared/data da bench digits_tllib_usps_mnist --vmap-seeds --results-dir benchmarks/results
Report: python benchmarks/real_digits_table.py --results-dir benchmarks/results/digits_tllib_usps_mnist

50,000 steps of batch 128 per run (78-91 s a run alone on an H200); ``--vmap-seeds`` trains a
method's three seeds as one program.  ``DA_TLLIB_STEPS`` shortens every run for a smoke test
(the sweep is then named ``..._steps<N>``).  Protocol: ``da_framework/bench/protocols.py``.
"""

import os

from da_framework.bench.protocols import tllib_digits_sweep


def get_sweep() -> dict:
    """tllib's digits methods x 3 seeds on usps -> mnist (steps from $DA_TLLIB_STEPS, default 50,000)."""
    steps = os.environ.get("DA_TLLIB_STEPS")
    return tllib_digits_sweep("usps", "mnist", int(steps) if steps else None)
