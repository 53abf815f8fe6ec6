"""Train with an adaptation loss from Python: register a loss, combine it, train, evaluate."""

import jax
import jax.numpy as jnp

from da_framework.config import ExperimentConfig
from da_framework.losses import LossInputs, register_loss
from da_framework.train import train


@register_loss("my_coral", description="Deep CORAL", reference="Sun & Saenko, ECCV-W 2016")
def my_coral(inputs: LossInputs) -> jax.Array:
    """Squared Frobenius distance of the feature covariances, / 4d^2."""
    cov = lambda f: jnp.cov(f, rowvar=False)  # noqa: E731
    d = inputs.source_features.shape[1]
    return jnp.sum((cov(inputs.source_features) - cov(inputs.target_features)) ** 2) / (4 * d * d)


for method in ["source_only", "cross_entropy + 1.0*my_coral", "dann"]:
    config = ExperimentConfig(source="digits/source", target="digits/rotate", method=method, steps=500)
    result = train(config)
    print(f"{method:32s} target acc {result.metrics['target_test_accuracy']:.3f}")
