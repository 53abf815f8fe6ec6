"""MNIST -> MNIST-M digits at 32x32x3 (MNIST resized and replicated to RGB), LeNet.

Data: ``mnist32rgb`` (``<data_dir>/mnist/mnist.npz``, else a prepared tfds ``mnist``) and
``mnistm32`` (``<data_dir>/mnist_m/mnist_m.npz``): the local layout of da_framework/data/local.py.
DANN used 28x28 inputs; 32x32 here so that the pair shares ``mnist32rgb`` with SVHN.

Literature: as reported in Ganin et al., "Domain-Adversarial Training of Neural
Networks", JMLR 2016, Table 2: source only 0.5225, DANN 0.7666, trained on target 0.9596.
Our numbers: not run here (no MNIST/MNIST-M copy on this machine).

Run: da run mnist_to_mnistm --method source_only,dann --seeds 3
"""


def get_config() -> dict:
    """MNIST -> MNIST-M (32x32 RGB) with LeNet (other fields: ExperimentConfig defaults)."""
    return {"source": "mnist32rgb", "target": "mnistm32", "model": "lenet", "steps": 10000}
