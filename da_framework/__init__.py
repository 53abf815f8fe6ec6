"""da_framework: domain adaptation and transfer learning on JAX."""

from da_framework.xla_cpu import apply_cpu_defaults

__version__ = "0.1.0"

# Faster XLA:CPU kernels by default, before JAX's backend starts (da_framework/xla_cpu.py;
# DA_XLA_CPU_DEFAULTS=0 opts out).  Runs record the flags they ran with.
apply_cpu_defaults()
