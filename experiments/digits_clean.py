"""Embedded digits: unshifted source pool -> target pool under the 'clean' shift.

See da_framework/data/digits.py for exactly how the domains are made.
Run: da run digits_clean --method source_only,dann,dan --seeds 3
"""


def get_config() -> dict:
    """Config of this source/target pairing (other fields: ExperimentConfig defaults)."""
    return {"source": "digits/source", "target": "digits/clean"}
