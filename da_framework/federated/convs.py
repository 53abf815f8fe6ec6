"""Convolutions whose gradients stay fast inside compiled loops on XLA:CPU.

XLA:CPU runs a convolution with its fast Eigen kernel only when the convolution is in the
canonical NHWC input / HWIO kernel form.  The gradients JAX derives for a convolution are
convolutions in other forms (the input gradient uses an ``O,I``-swapped kernel, the kernel
gradient puts the input channels on the batch axis).  XLA's ``ConvCanonicalization`` pass
rewrites such convolutions into the canonical form with transposes, but it visits only the
*entry* computation (``xla/service/cpu/conv_canonicalization.cc``): the same convolutions
inside a ``while`` body (every ``lax.scan`` / ``lax.map`` / ``fori_loop``) fall back to a naive
loop nest.  On the 2-core AMD EPYC of ``docs/federated/README.md`` a LeNet client step inside
a scan took 3.3 ms this way, against 0.8 ms when the same steps were unrolled.

:func:`loop_friendly_convs` wraps a function so that every convolution in it (stride and
dilation 1, one feature and batch group) gets a hand-written VJP that spells both gradient
convolutions in the canonical form with explicit transposes, i.e. the rewrite XLA would have
done in the entry computation.  The forward convolution is the original one; the gradients
are the same sums in the same canonical form, so the results match the unwrapped function's
entry-computation (un-looped) gradients, bitwise on the machine above
(``tests/test_federated_convs.py`` checks them to float tolerance).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

def _perms(dn: lax.ConvDimensionNumbers) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Transposes taking (input, kernel, output) to (N, *spatial, C), (*spatial, I, O), (N, *spatial, C)."""
    lhs, rhs, out = dn
    return (lhs[0], *lhs[2:], lhs[1]), (*rhs[2:], rhs[1], rhs[0]), (out[0], *out[2:], out[1])


def _canonical_dn(ndim: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers of the canonical form for ``ndim`` spatial dimensions."""
    s = tuple(range(1, ndim + 1))
    return lax.ConvDimensionNumbers((0, ndim + 1, *s), (ndim + 1, ndim, *range(ndim)), (0, ndim + 1, *s))


def _conv(x: jax.Array, w: jax.Array, padding: tuple[tuple[int, int], ...], precision: Any, pet: Any) -> jax.Array:
    """Stride-1 convolution of canonical x (N, *S, C) and w (*K, I, O)."""
    return lax.conv_general_dilated(
        x, w, (1,) * len(padding), padding, dimension_numbers=_canonical_dn(len(padding)),
        precision=precision, preferred_element_type=pet,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def canonical_conv(x: jax.Array, w: jax.Array, padding: tuple[tuple[int, int], ...], precision: Any = None,
                   pet: Any = None) -> jax.Array:
    """Stride-1 convolution (x: (N, *S, C), w: (*K, I, O), explicit padding) whose VJP convolutions
    are canonical too.

    Gradients (for one spatial axis, input size n, kernel k, padding (lo, hi)):
    dx = conv(g, flip(w) with I and O swapped, padding (k-1-lo, k-1-hi)), and
    dw = conv(x with N and C swapped, g as a kernel with N as its input axis, padding (lo, hi)),
    the kernel's (C, *K, O) output transposed back to (*K, C, O).
    """
    return _conv(x, w, padding, precision, pet)


def _canonical_conv_fwd(x, w, padding, precision, pet):
    return _conv(x, w, padding, precision, pet), (x, w)


def _canonical_conv_bwd(padding, precision, pet, res, g):
    x, w = res
    nd = len(padding)
    kernel = w.shape[:nd]
    spatial = tuple(range(nd))
    w_flip = jnp.transpose(lax.rev(w, spatial), (*spatial, nd + 1, nd))
    pad_dx = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, padding))
    dx = _conv(g.astype(x.dtype), w_flip, pad_dx, precision, None).astype(x.dtype)
    xt = jnp.transpose(x, (nd + 1, *range(1, nd + 1), 0))  # (C, *S, N): C as batch, N as features
    gt = jnp.transpose(g, (*range(1, nd + 1), 0, nd + 1))  # (*S_out, N, O): a kernel with N as input
    dw = _conv(xt, gt.astype(x.dtype), padding, precision, None)  # (C, *K, O)
    dw = jnp.transpose(dw, (*range(1, nd + 1), 0, nd + 1)).astype(w.dtype)
    return dx, dw


canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def _rewritable(params: dict[str, Any]) -> bool:
    """Whether a ``conv_general_dilated`` equation is one :func:`canonical_conv` computes."""
    ones = lambda t: all(v == 1 for v in t)  # noqa: E731
    return (
        ones(params["window_strides"]) and ones(params["lhs_dilation"]) and ones(params["rhs_dilation"])
        and params["feature_group_count"] == 1 and params["batch_group_count"] == 1
        and not isinstance(params["padding"], str)
    )


def _rewritten_conv(x: jax.Array, w: jax.Array, params: dict[str, Any]) -> jax.Array:
    """One ``conv_general_dilated`` equation computed through :func:`canonical_conv`."""
    px, pw, po = _perms(params["dimension_numbers"])
    padding = tuple(tuple(int(v) for v in p) for p in params["padding"])
    y = canonical_conv(jnp.transpose(x, px), jnp.transpose(w, pw), padding, params["precision"],
                       params["preferred_element_type"])
    return jnp.transpose(y, tuple(sorted(range(len(po)), key=po.__getitem__)))


def _eval_rewritten(jaxpr: jcore.Jaxpr, consts: list[Any], *args: Any) -> list[Any]:
    """Evaluates a jaxpr, routing its top-level convolutions through :func:`canonical_conv`."""
    env: dict[Any, Any] = {}
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]  # noqa: E731
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is lax.conv_general_dilated_p and _rewritable(eqn.params):
            outs = [_rewritten_conv(*invals, eqn.params)]
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def loop_friendly_convs(fun: Callable[..., Any]) -> Callable[..., Any]:
    """``fun`` with its convolutions' gradients in XLA:CPU's fast canonical form (same values).

    Only top-level convolutions of ``fun``'s jaxpr with stride 1, no dilation and one group
    are rewritten (others, and convolutions nested in inner ``jit``/``custom_vjp`` calls, run
    as they are).  Use it on the loss of a step that runs inside ``lax.scan`` on CPU.
    """

    @functools.wraps(fun)
    def wrapped(*args: Any) -> Any:
        closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
        outs = _eval_rewritten(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return wrapped


def has_convolutions(fun: Callable[..., Any], *args: Any) -> bool:
    """Whether tracing ``fun(*args)`` produces any convolution (searching nested jaxprs too)."""

    def search(jaxpr: jcore.Jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive is lax.conv_general_dilated_p:
                return True
            for sub in jcore.jaxprs_in_params(eqn.params):
                if search(getattr(sub, "jaxpr", sub)):
                    return True
        return False

    return search(jax.make_jaxpr(fun)(*args).jaxpr)
