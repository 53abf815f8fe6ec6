import jax
import jax.numpy as jnp

from da_framework.train.flops import model_flops


def test_dense_and_conv_flops_match_hand_counts():
    x, w = jnp.ones((8, 16)), jnp.ones((16, 4))
    assert model_flops(jnp.dot, x, w) == 2 * 8 * 16 * 4

    img, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 5))

    def conv(img, k):
        return jax.lax.conv_general_dilated(img, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    # every one of the 2*8*8*5 outputs is 3*3*3 multiply-adds
    assert model_flops(conv, img, k) == 2 * (2 * 8 * 8 * 5) * 27


def test_gradient_of_a_matmul_counts_three_products_and_nested_jit_is_seen():
    x, w = jnp.ones((8, 16)), jnp.ones((16, 4))
    loss = jax.jit(lambda w, x: jnp.sum(jnp.tanh(x @ w)))
    fwd = 2 * 8 * 16 * 4
    # value_and_grad wrt w: forward product + dL/dw product (no dL/dx needed)
    assert model_flops(jax.value_and_grad(loss), w, x) == 2 * fwd
    assert model_flops(jax.value_and_grad(loss, argnums=(0, 1)), w, x) == 3 * fwd


def test_scan_body_counts_once_per_iteration():
    w = jnp.ones((4, 4))

    def f(h):
        return jax.lax.scan(lambda c, _: (c @ w, None), h, None, length=5)[0]

    inner = 5 * 2 * 2 * 4 * 4
    assert model_flops(f, jnp.ones((2, 4))) == inner

    # a scan inside a scan: the inner body counts outer * inner times, the outer body's own
    # (2, 4) x (4, 3) product once per outer iteration
    def g(h):
        def outer(c, _):
            c = f(c)
            return c, c @ jnp.ones((4, 3))

        return jax.lax.scan(outer, h, None, length=3)

    assert model_flops(g, jnp.ones((2, 4))) == 3 * (inner + 2 * 2 * 4 * 3)
