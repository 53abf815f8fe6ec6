"""MNIST -> USPS digits (28x28x1 gray; USPS upsampled from 16x16), LeNet.

Data: ``<data_dir>/mnist/mnist.npz`` (else a prepared tfds ``mnist``) and
``<data_dir>/usps/usps.npz``: the local layout of da_framework/data/local.py.

Literature (different protocol: ADDA samples 2000 MNIST and 1800 USPS images):
as reported in Tzeng et al., "Adversarial Discriminative Domain Adaptation", CVPR 2017,
Table 2: source only 0.752 +- 0.016, ADDA 0.894 +- 0.002 target accuracy.
Our numbers: not run yet (the tllib protocol is in mnist_usps_tllib / usps_mnist_tllib).

Run: da run mnist_to_usps --method source_only,dann --seeds 3
"""


def get_config() -> dict:
    """MNIST -> USPS with LeNet (other fields: ExperimentConfig defaults)."""
    return {"source": "mnist", "target": "usps", "model": "lenet", "steps": 5000}
