"""SVHN -> MNIST digits at 32x32x3 (MNIST resized and replicated to RGB), LeNet.

Data: ``svhn_cropped`` and ``mnist32rgb`` (tfds ``svhn_cropped`` and ``mnist``, prepared).
The 28x28 gray variant is the pair ``svhn_gray28 -> mnist``.

Literature: as reported in Ganin et al., "Domain-Adversarial Training of Neural
Networks", JMLR 2016, Table 2: source only 0.5490, DANN 0.7385, trained on target 0.9942;
and in Tzeng et al., CVPR 2017 (ADDA), Table 2: source only 0.601 +- 0.011,
ADDA 0.760 +- 0.018 target accuracy.
Our numbers: not run here (no SVHN/MNIST copy on this machine).

Run: da run svhn_to_mnist --method source_only,dann --seeds 3
"""


def get_config() -> dict:
    """SVHN -> MNIST (32x32 RGB) with LeNet (other fields: ExperimentConfig defaults)."""
    return {"source": "svhn_cropped", "target": "mnist32rgb", "model": "lenet", "steps": 10000}
