"""Office-31 on Transfer-Learning-Library's protocol: 9 methods x 6 pairs x 3 seeds, ResNet-50 from ImageNet.

Needs a copy of Office-31 (``$DA_DATA_DIR/office31/{amazon,dslr,webcam}/images/<class>/*.jpg``,
docs/image_datasets.md) and torchvision's ResNet-50 V1 weights on disk
(``resnet50-0676ba61.pth``, or the same tensors as ``.safetensors``), named by
``$DA_RESNET50_WEIGHTS``:

    DA_DATA_DIR=/data DA_RESNET50_WEIGHTS=/data/resnet50-0676ba61.pth da bench office31_tllib --results-dir results
    da report results/office31_tllib

Every protocol choice, its tllib source and the known differences: the docstring of
``da_framework/bench/tllib_office.py``; tllib's published numbers: docs/office31.md.
Not run here (no Office-31 copy, no ImageNet weights, no GPU on these machines).
"""

import os

from da_framework.bench.tllib_office import METHOD_SETTINGS, OFFICE31_PAIRS, office31_base


def get_sweep() -> dict:
    """The tllib Office-31 table as one sweep (per-method settings in ``method_settings``)."""
    weights = os.environ.get("DA_RESNET50_WEIGHTS")
    if not weights:
        raise ValueError("set DA_RESNET50_WEIGHTS to the path of torchvision's ResNet-50 weights (.pth or .safetensors)")
    return {
        "name": "office31_tllib",
        "base": office31_base(weights),
        "methods": list(METHOD_SETTINGS),
        "method_settings": {m: s for m, s in METHOD_SETTINGS.items() if s},
        "pairs": [(f"office31/{s}", f"office31/{t}") for s, t in OFFICE31_PAIRS],
        "seeds": [0, 1, 2],
        "checkpoint_every": 1000,
    }
