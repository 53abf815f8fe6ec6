"""loop_friendly_convs: same gradients as JAX's own, with every convolution in canonical form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from da_framework.federated.convs import has_convolutions, loop_friendly_convs

CASES = [  # (input shape, kernel shape, dimension numbers, padding, strides)
    ((3, 9, 9, 2), (5, 5, 2, 4), ("NHWC", "HWIO", "NHWC"), "SAME", (1, 1)),
    ((3, 2, 9, 7), (4, 2, 3, 3), ("NCHW", "OIHW", "NCHW"), ((2, 0), (1, 3)), (1, 1)),  # asymmetric padding
    ((2, 11, 3), (3, 3, 5), ("NWC", "WIO", "NWC"), "VALID", (1,)),  # 1-D
    ((2, 9, 9, 2), (3, 3, 2, 4), ("NHWC", "HWIO", "NHWC"), "SAME", (2, 2)),  # strided: left as is
]


def _loss(dn, padding, strides):
    def f(x, w):
        y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
    return f


@pytest.mark.parametrize("xs,ws,dn,padding,strides", CASES)
def test_gradients_equal_jax_conv_gradients(xs, ws, dn, padding, strides):
    kx, kw = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
    f = _loss(dn, padding, strides)
    want = jax.jit(jax.value_and_grad(f, (0, 1)))(x, w)
    got = jax.jit(jax.value_and_grad(loop_friendly_convs(f), (0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def _conv_dnums(jaxpr):
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is lax.conv_general_dilated_p:
            out.append(eqn.params["dimension_numbers"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += _conv_dnums(getattr(sub, "jaxpr", sub))
    return out


def test_gradient_convolutions_inside_a_scan_are_canonical():
    # Random inputs of unit scale keep the loss well conditioned: with all-ones inputs the
    # outputs reach 75, where sin() turns float32 summation-order differences (which differ
    # between CPUs) into 1e-3 differences after three steps.
    kx, kw = jax.random.split(jax.random.key(1))
    x, w = jax.random.normal(kx, (2, 8, 8, 3)), 0.2 * jax.random.normal(kw, (5, 5, 3, 4))
    f = _loss(("NHWC", "HWIO", "NHWC"), "SAME", (1, 1))
    canonical = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))

    def loop(g):
        return lambda x, w: lax.scan(lambda c, _: (c - 0.1 * jax.grad(g, (0, 1))(x, c)[1], None), w, None, length=3)[0]

    plain, friendly = (_conv_dnums(jax.make_jaxpr(loop(g))(x, w).jaxpr) for g in (f, loop_friendly_convs(f)))
    assert len(friendly) == 3 and all(d == canonical for d in friendly)  # forward, input and kernel gradient
    assert any(d != canonical for d in plain)  # JAX's own gradients are not canonical (what the rewrite is for)
    np.testing.assert_allclose(jax.jit(loop(loop_friendly_convs(f)))(x, w), jax.jit(loop(f))(x, w), rtol=1e-5, atol=1e-5)


def test_has_convolutions_finds_nested_ones():
    conv = lambda x: lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1)), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    x = jnp.ones((1, 4, 4, 1))
    assert has_convolutions(conv, x) and has_convolutions(jax.jit(conv), x) and has_convolutions(jax.checkpoint(conv), x)
    assert not has_convolutions(lambda x: x * 2.0, x)
