"""da_framework: domain adaptation and transfer learning on JAX."""

__version__ = "0.1.0"
