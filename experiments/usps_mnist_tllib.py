"""USPS -> MNIST, Transfer-Learning-Library's digits protocol (full length: 50,000 steps of batch 128).

Every protocol choice, its tllib source and the known differences are in the docstring of
``da_framework/bench/protocols.py``.  Accuracy (seed 0, on a GPU): docs/real_digits.md, "The full tllib protocol on a GPU".
Data: ``DA_DATA_DIR=../shared/data`` (layout ``<data_dir>/<dataset>/<dataset>.npz``, docs/real_digits.md).
"""

from da_framework.bench.protocols import tllib_digits


def get_config() -> dict:
    """USPS -> MNIST on tllib's digits protocol."""
    return tllib_digits("usps", "mnist", short=False)
