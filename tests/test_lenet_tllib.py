"""tllib's digits LeNet (lenet_tllib): parameter count, feature sizes, dropout modes, input normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.models.lenet import LeNet, lenet_tllib
from da_framework.models.registry import ModelError, make_model

X = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))


def count(params):
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def test_parameter_count_is_the_hand_count():
    model = make_model("lenet_tllib", num_classes=10)
    params = model.init(jax.random.PRNGKey(0), X)["params"]
    conv1, conv2 = 5 * 5 * 1 * 20 + 20, 5 * 5 * 20 * 50 + 50
    fc, head = 800 * 500 + 500, 500 * 10 + 10
    assert count(params) == conv1 + conv2 + fc + head == 431080
    assert params["backbone"]["Dense_0"]["kernel"].shape == (800, 500)  # 50 * 4 * 4 flattened features
    logits, features = model.apply({"params": params}, X)
    assert logits.shape == (4, 10) and features.shape == (4, 500)


def test_default_lenet_is_unchanged():
    params = LeNet().init(jax.random.PRNGKey(0), X)["params"]
    assert params["Dense_0"]["kernel"].shape == (7 * 7 * 50, 500)  # SAME padding: 2,450 features


def test_eval_is_deterministic_and_train_drops():
    model = make_model("lenet_tllib", num_classes=10)
    variables = model.init(jax.random.PRNGKey(0), X)
    a = model.apply(variables, X, train=False, rngs={"dropout": jax.random.PRNGKey(1)})[1]
    b = model.apply(variables, X, train=False, rngs={"dropout": jax.random.PRNGKey(2)})[1]
    np.testing.assert_array_equal(a, b)
    c = model.apply(variables, X, train=True, rngs={"dropout": jax.random.PRNGKey(1)})[1]
    d = model.apply(variables, X, train=True, rngs={"dropout": jax.random.PRNGKey(2)})[1]
    assert not np.allclose(c, d)
    assert float(jnp.mean(c == 0)) > float(jnp.mean(a == 0)) + 0.2  # Dropout(0.5) on the 500 features


def test_dropout2d_zeroes_whole_channels():
    """With only the channel dropout, the last conv's output is zero on whole (example, channel) maps."""
    net = LeNet(padding="VALID", channel_dropout=0.5)
    variables = net.init(jax.random.PRNGKey(0), X)
    _, inter = net.apply(
        variables,
        X,
        train=True,
        rngs={"dropout": jax.random.PRNGKey(3)},
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    conv = inter["intermediates"]["Conv_1"]["__call__"][0]  # before dropout: (4, 8, 8, 50), no zero maps
    dropped = inter["intermediates"]["Dropout_0"]["__call__"][0]
    assert conv.shape == (4, 8, 8, 50) and bool(jnp.all(jnp.any(conv != 0, axis=(1, 2))))
    zero_maps = jnp.all(dropped == 0, axis=(1, 2))  # (4, 50)
    kept = ~zero_maps
    assert 0.3 < float(jnp.mean(zero_maps)) < 0.7
    # kept maps are the whole map scaled by 1 / (1 - 0.5); no element-wise holes
    np.testing.assert_allclose(
        jnp.where(kept[:, None, None, :], dropped, 0), jnp.where(kept[:, None, None, :], 2 * conv, 0), rtol=1e-6
    )


def test_input_normalisation():
    net = lenet_tllib(input_mean=0.5, input_std=0.5)
    plain = lenet_tllib()
    variables = plain.init(jax.random.PRNGKey(0), X)
    np.testing.assert_allclose(net.apply(variables, X), plain.apply(variables, (X - 0.5) / 0.5), rtol=1e-6)
    assert not np.allclose(net.apply(variables, X), plain.apply(variables, X))


def test_bad_kwarg_is_a_model_error():
    with pytest.raises(ModelError, match="lenet_tllib"):
        make_model("lenet_tllib", num_classes=10, widht=3)
