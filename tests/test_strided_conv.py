"""strided_conv: JAX's forward and kernel gradient, and a polyphase input gradient equal to JAX's own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from da_framework.models.strided_conv import StridedConv, polyphase_input_grad, strided_conv

CASES = [  # (input NHWC, kernel HW, stride, padding)
    ((3, 16, 16, 4), (5, 5), (2, 2), ((2, 2), (2, 2))),  # DTN's layers
    ((2, 9, 11, 3), (5, 5), (2, 2), ((2, 2), (2, 2))),  # odd sizes: phases of unequal length
    ((2, 11, 10, 3), (4, 3), (3, 2), ((1, 0), (2, 1))),  # stride 3, asymmetric padding, rows != columns
    ((2, 10, 10, 2), (7, 7), (2, 2), ((3, 3), (3, 3))),  # the ResNet stem's shape
    ((2, 8, 8, 3), (1, 1), (2, 2), ((0, 0), (0, 0))),  # kernel smaller than the stride: phases with no taps
    ((2, 8, 8, 3), (3, 3), (2, 2), ((0, 0), (0, 0))),  # no padding: the last rows are never read
]


def _plain(x, k, stride, padding):
    return lax.conv_general_dilated(x, k, stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _loss(conv, stride, padding):
    def f(x, k):
        y = conv(x, k, stride, padding)
        return jnp.sum(jnp.sin(y) * jnp.linspace(-1.0, 2.0, y.size).reshape(y.shape))
    return f


@pytest.mark.parametrize("xs,ks,stride,padding", CASES)
def test_gradients_equal_jax_own_in_float32_and_float64(xs, ks, stride, padding):
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, xs)
    k = 0.3 * jax.random.normal(kk, (*ks, xs[-1], 5))
    want = jax.jit(jax.value_and_grad(_loss(_plain, stride, padding), (0, 1)))(x, k)
    got = jax.jit(jax.value_and_grad(_loss(strided_conv, stride, padding), (0, 1)))(x, k)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        x64, k64 = jnp.asarray(x, jnp.float64), jnp.asarray(k, jnp.float64)
        want = jax.grad(_loss(_plain, stride, padding), (0, 1))(x64, k64)
        got = jax.grad(_loss(strided_conv, stride, padding), (0, 1))(x64, k64)
        for a, b in zip(want, got):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)


def test_input_gradient_equals_a_numpy_loop_by_hand():
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((1, 7, 6, 2)), rng.standard_normal((3, 4, 2, 3))
    stride, (pt, pl) = (2, 3), (1, 2)
    xp = np.pad(x, ((0, 0), (pt, 1), (pl, 2), (0, 0)))
    oh, ow = (xp.shape[1] - 3) // 2 + 1, (xp.shape[2] - 4) // 3 + 1
    g = rng.standard_normal((1, oh, ow, 3))
    dxp = np.zeros_like(xp)  # y[i, j] = sum_{a, b} xp[2i + a, 3j + b] k[a, b]  =>  scatter g back
    for i in range(oh):
        for j in range(ow):
            dxp[0, 2 * i:2 * i + 3, 3 * j:3 * j + 4] += np.einsum("abio,o->abi", k, g[0, i, j])
    with jax.enable_x64(True):
        got = polyphase_input_grad(jnp.asarray(g), jnp.asarray(k), x.shape, stride, ((pt, 1), (pl, 2)))
    np.testing.assert_allclose(np.asarray(got), dxp[:, pt:pt + 7, pl:pl + 6], rtol=1e-12, atol=1e-12)


def test_module_equals_flax_conv_and_keeps_the_dtype():
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    ours = StridedConv(6, (5, 5), (2, 2), ((2, 2), (2, 2)))
    flax_conv = nn.Conv(6, (5, 5), strides=(2, 2), padding=((2, 2), (2, 2)))
    v = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, flax_conv.init(jax.random.key(1), x))
    np.testing.assert_allclose(ours.apply(v, x), flax_conv.apply(v, x), rtol=1e-6, atol=1e-6)
    g_ours = jax.grad(lambda v: jnp.sum(ours.apply(v, x) ** 2))(v)
    g_flax = jax.grad(lambda v: jnp.sum(flax_conv.apply(v, x) ** 2))(v)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    vb = jax.tree.map(lambda a: a.astype(jnp.bfloat16), v)
    xb = x.astype(jnp.bfloat16)
    assert ours.apply(vb, xb).dtype == jnp.bfloat16
    dx = jax.grad(lambda x: jnp.sum(ours.apply(vb, x).astype(jnp.float32)))(xb)
    assert dx.dtype == jnp.bfloat16
