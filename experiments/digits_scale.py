"""Embedded digits: unshifted source pool -> target pool under the 'scale' shift.

See da_framework/data/digits.py for exactly how the domains are made.
Run: da run digits_scale --method source_only,dann,dan --seeds 3
"""


def get_config() -> dict:
    """Config of this source/target pairing (other fields: ExperimentConfig defaults).

    The defaults are the standard DANN protocol (SGD, momentum 0.9, lr 0.01 with the
    1/(1+10p)^0.75 decay, no bottleneck, 500 steps of 64+64 images); the LeNet is narrowed
    to 16/32 channels and 256 features because the images are 16x16.
    """
    return {
        "source": "digits/source",
        "target": "digits/scale",
        "model": "lenet",
        "model_kwargs": {"channels": (16, 32), "dense": 256},
    }
