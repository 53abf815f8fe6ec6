"""Embedded digits: unshifted source pool -> target pool under the 'blur' shift.

See da_framework/data/digits.py for exactly how the domains are made.
Run: da run digits_blur --method source_only,dann,dan --seeds 3
"""


def get_config() -> dict:
    """Config of this source/target pairing (other fields: ExperimentConfig defaults)."""
    return {"source": "digits/source", "target": "digits/blur"}
