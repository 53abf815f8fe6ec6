"""USPS -> MNIST digits (28x28x1 gray; USPS upsampled from 16x16), LeNet.

Data: ``<data_dir>/usps/usps.npz`` and ``<data_dir>/mnist/mnist.npz`` (else a prepared
tfds ``mnist``): the local layout of da_framework/data/local.py.

Literature (different protocol: ADDA samples 1800 USPS and 2000 MNIST images):
as reported in Tzeng et al., "Adversarial Discriminative Domain Adaptation", CVPR 2017,
Table 2: source only 0.571 +- 0.017, ADDA 0.901 +- 0.008 target accuracy.
Our numbers: not run yet (the tllib protocol is in mnist_usps_tllib / usps_mnist_tllib).

Run: da run usps_to_mnist --method source_only,dann --seeds 3
"""


def get_config() -> dict:
    """USPS -> MNIST with LeNet (other fields: ExperimentConfig defaults)."""
    return {"source": "usps", "target": "mnist", "model": "lenet", "steps": 5000}
