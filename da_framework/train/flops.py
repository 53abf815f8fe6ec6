"""Model FLOPs of a JAX function, counted from its jaxpr (for model FLOPs utilisation).

XLA's ``compiled.cost_analysis()`` does not count convolutions that the GPU backend hands to
cuDNN as custom calls, so on a GPU it under-reports a CNN's FLOPs by orders of magnitude.
Counting the matrix products and convolutions of the traced program instead gives the
"model FLOPs" of MFU (Chowdhery et al., 'PaLM', 2022, App. B): 2 FLOPs per multiply-add of
every ``dot_general`` and ``conv_general_dilated``, forward and backward, independent of
the backend.  Element-wise work is ignored (it is negligible next to them in these models).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core


def _eqn_flops(eqn: Any) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (contract_lhs, _), _ = eqn.params["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        out_size = math.prod(eqn.outvars[0].aval.shape)
        return 2.0 * out_size * math.prod(lhs_shape[d] for d in contract_lhs)
    if name == "conv_general_dilated":
        rhs_shape = eqn.invars[1].aval.shape
        out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
        out_size = math.prod(eqn.outvars[0].aval.shape)
        return 2.0 * out_size * math.prod(rhs_shape) / out_features
    return 0.0


def _sub_jaxprs(value: Any) -> list[core.Jaxpr]:
    if isinstance(value, core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_flops(jaxpr: core.Jaxpr) -> float:
    """FLOPs of the matrix products and convolutions of ``jaxpr``, nested calls included.

    A ``scan`` body counts ``length`` times; ``while`` and ``cond`` bodies count once (their
    trip count or branch is not known statically; the train steps here have none).
    """
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                total += times * jaxpr_flops(sub)
    return total


def model_flops(fn: Callable[..., Any], *args: Any) -> float:
    """Matrix-product and convolution FLOPs of one call ``fn(*args)`` (traced, not run)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
