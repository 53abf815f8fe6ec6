"""USPS -> MNIST digits (28x28x1 gray; USPS upsampled from 16x16), LeNet.

Data: ``usps`` from the local file layout of da_framework/data/local_digits.py
(``<data_dir>/local_digits/usps.npz``), ``mnist`` from tfds (prepared ``mnist``).

Literature (different protocol: ADDA samples 1800 USPS and 2000 MNIST images):
as reported in Tzeng et al., "Adversarial Discriminative Domain Adaptation", CVPR 2017,
Table 2: source only 0.571 +- 0.017, ADDA 0.901 +- 0.008 target accuracy.
Our numbers: not run here (no MNIST/USPS copy on this machine).

Run: da run usps_to_mnist --method source_only,dann --seeds 3
"""


def get_config() -> dict:
    """USPS -> MNIST with LeNet (other fields: ExperimentConfig defaults)."""
    return {"source": "usps", "target": "mnist", "model": "lenet", "steps": 5000}
