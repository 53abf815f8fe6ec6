"""Office-31 Amazon -> Webcam, DANN on Transfer-Learning-Library's protocol (ResNet-50 from ImageNet).

Other pairs and methods: ``--set source=office31/dslr --set target=office31/amazon``; for
another method's own tllib settings use the sweep ``experiments/sweeps/office31_tllib.py`` (or
``da_framework.bench.tllib_office.office31_config``), since ``--method`` alone keeps DANN's.
Needs ``$DA_DATA_DIR/office31/`` and ``$DA_RESNET50_WEIGHTS`` (torchvision ResNet-50 V1 ``.pth``):

    DA_DATA_DIR=/data DA_RESNET50_WEIGHTS=/data/resnet50-0676ba61.pth da run office31_tllib

Protocol and known differences: ``da_framework/bench/tllib_office.py``. Not run here.
"""

import os

from da_framework.bench.tllib_office import office31_config


def get_config() -> dict:
    """DANN, amazon -> webcam, tllib's Office-31 settings."""
    weights = os.environ.get("DA_RESNET50_WEIGHTS")
    if not weights:
        raise ValueError("set DA_RESNET50_WEIGHTS to the path of torchvision's ResNet-50 weights (.pth or .safetensors)")
    return office31_config("amazon", "webcam", "dann", weights)
