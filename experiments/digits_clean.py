"""Embedded digits: unshifted source pool -> target pool under the 'clean' shift.

See da_framework/data/digits.py for exactly how the domains are made.
Run: da run digits_clean --method source_only,dann,dan --seeds 3
"""

from da_framework.data.digits import pair_config


def get_config() -> dict:
    """Config of this source/target pairing (:func:`da_framework.data.digits.pair_config`)."""
    return pair_config("clean")
