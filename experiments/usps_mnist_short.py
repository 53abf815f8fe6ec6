"""USPS -> MNIST, the tllib digits protocol shortened to fit a 2-core CPU (5,000 steps of batch 64).

Every protocol choice, its tllib source and the known differences are in the docstring of
``da_framework/bench/protocols.py``.  Accuracy (seed 0): docs/real_digits.md.
Data: ``DA_DATA_DIR=../shared/data`` (layout ``<data_dir>/<dataset>/<dataset>.npz``, docs/real_digits.md).
"""

from da_framework.bench.protocols import tllib_digits


def get_config() -> dict:
    """USPS -> MNIST on tllib's digits protocol (short)."""
    return tllib_digits("usps", "mnist", short=True)
