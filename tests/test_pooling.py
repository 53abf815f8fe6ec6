"""models/pooling.py: the fast max-pool equals flax's, value and gradient, bitwise, ties included."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.models.pooling import max_pool


def _pair(shape, window, strides=None, padding="VALID", seed=0):
    rng = np.random.default_rng(seed)
    # small integers: most windows hold ties, the case where gradients could differ
    x = jnp.asarray(rng.integers(-1, 2, shape).astype(np.float32))
    ours = jax.jit(lambda x: max_pool(x, window, strides, padding))(x)
    ref = nn.max_pool(x, window, strides=strides or window, padding=padding)
    u = jnp.asarray(rng.standard_normal(ref.shape).astype(np.float32))
    g_ours = jax.jit(jax.grad(lambda x: (max_pool(x, window, strides, padding) * u).sum()))(x)
    g_ref = jax.jit(jax.grad(lambda x: (nn.max_pool(x, window, strides=strides or window, padding=padding) * u).sum()))(x)
    return ours, ref, g_ours, g_ref


@pytest.mark.parametrize(
    "shape,window,padding",
    [((3, 8, 8, 4), (2, 2), "VALID"), ((2, 28, 28, 3), (2, 2), "SAME"), ((2, 9, 6, 2), (3, 3), "VALID"), ((4, 12, 5), (4,), "VALID")],
)
def test_fast_path_matches_flax_bitwise(shape, window, padding):
    ours, ref, g_ours, g_ref = _pair(shape, window, padding=padding)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g_ref))
    # the gradient is a routing: every window sends its whole cotangent to exactly one element
    assert np.count_nonzero(np.asarray(g_ours)) <= np.prod(ref.shape)


def test_ties_go_to_the_first_element_of_the_window():
    x = jnp.zeros((1, 2, 2, 1))
    g = jax.grad(lambda x: max_pool(x, (2, 2)).sum())(x)
    np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("shape,window,strides,padding", [((2, 7, 7, 3), (2, 2), None, "VALID"), ((2, 8, 8, 3), (3, 3), (2, 2), "SAME")])
def test_other_cases_fall_back_to_flax(shape, window, strides, padding):
    ours, ref, g_ours, g_ref = _pair(shape, window, strides, padding)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g_ref))


def test_fast_path_has_no_scatter():
    hlo = jax.jit(jax.grad(lambda x: max_pool(x, (2, 2)).sum())).lower(jnp.ones((2, 8, 8, 3))).as_text()
    assert "scatter" not in hlo and "reduce_window" not in hlo


def test_lenet_gradients_bitwise_equal_to_flax_pooling(monkeypatch):
    """The whole LeNet's parameter gradients, not only the pool's: its consumers (the conv
    gradient, the bias sums) must reduce the same buffer in the same order."""
    import optax

    import da_framework.models.lenet as lenet_module
    from da_framework.models import make_model

    rng = np.random.default_rng(1)
    x = rng.random((8, 28, 28, 1)).astype(np.float32)
    x[x < 0.7] = 0.0  # a zero background, as digits have: ties in every pooling window there
    x, y = jnp.asarray(x), jnp.asarray(rng.integers(0, 10, 8))

    def grads():
        model = make_model("lenet", 10, 32)
        params = model.init(jax.random.key(0), x)
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x, train=True)[0], y).mean()
        return jax.jit(jax.grad(loss))(params)

    ours = grads()
    monkeypatch.setattr(lenet_module, "max_pool", lambda x, w, strides: nn.max_pool(x, w, strides=strides))
    ref = grads()
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
