"""USPS -> MNIST on SHOT's digits protocol (tim-learn/SHOT digit/uda_digit.py), 30 epochs of each phase, 28,410 steps.

Every protocol choice and the known differences from SHOT's code are in the docstring of
``da_framework/bench/protocols.py`` (``shot_digits``).  Accuracy: docs/real_digits.md.
Data: ``DA_DATA_DIR=../shared/data`` (layout ``<data_dir>/<dataset>/<dataset>.npz``, docs/real_digits.md).
"""

from da_framework.bench.protocols import shot_digits


def get_config() -> dict:
    """USPS -> MNIST on SHOT's digits protocol."""
    return shot_digits("usps", "mnist", short=False)
