"""Mixed precision: bfloat16 compute with float32 master weights and a float32 loss.

The recipe of Micikevicius et al., "Mixed Precision Training", ICLR 2018, with bfloat16
(Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019), whose float32
exponent range makes loss scaling unnecessary:

* the train state keeps float32 parameters and optimiser state (the master weights);
* each step casts the floating parameters and inputs to the compute dtype, so the model's
  forward and backward passes run in bfloat16 (Flax layers compute in the dtype of their
  inputs and parameters; its normalisation layers reduce statistics in float32);
* logits and features are cast back to float32 before any loss term, so soft-maxes,
  kernels and covariances are computed in float32 (``cross_entropy`` uses optax's
  log-softmax, which subtracts the max);
* gradients flow back through the casts and arrive in float32.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from da_framework.errors import UserError

T = TypeVar("T")

COMPUTE_DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class PrecisionError(UserError):
    """Raised for an unknown compute dtype."""


def get_compute_dtype(name: str) -> Any:
    """The JAX dtype named ``name`` (``"float32"`` or ``"bfloat16"``)."""
    if name not in COMPUTE_DTYPES:
        raise PrecisionError(f"unknown compute_dtype {name!r}; valid: {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def cast_floating(tree: T, dtype: Any) -> T:
    """Casts every floating-point leaf of ``tree`` to ``dtype``; integer leaves are kept."""

    def cast(x: Any) -> Any:
        return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

    return jax.tree.map(cast, tree)


def cast_like(tree: T, reference: Any) -> T:
    """Casts every leaf of ``tree`` to the dtype of the matching leaf of ``reference``."""
    return jax.tree.map(lambda x, r: jnp.asarray(x).astype(jnp.result_type(r)), tree, reference)
