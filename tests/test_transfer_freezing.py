"""Freezing, layer-wise learning rates and gradual unfreezing as optax transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.models.registry import make_model
from da_framework.transfer import TransferError, flatten
from da_framework.transfer.finetune import accuracy, fit
from da_framework.transfer.freezing import count_params, discriminative_lr, freeze, gradual_unfreezing, label_params

MODEL = make_model("lenet", 10, 16, channels=(4, 8), dense=32)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    params = MODEL.init(jax.random.key(0), jnp.asarray(x[:2]))["params"]
    return params, x, y


def _run(tx, params, x, y, steps):
    """Plain optimiser steps; returns the params after each step."""
    grad_fn = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(MODEL.apply({"params": p}, x)[0], y).mean()))
    state, out = tx.init(params), []
    for _ in range(steps):
        updates, state = tx.update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


# momentum + weight decay would move every parameter that is not truly frozen
MOVING_TX = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9))


def test_frozen_backbone_bit_identical(setup):
    params, x, y = setup
    after = _run(freeze(MOVING_TX, params, trainable=[r"^head/", r"^bottleneck/"]), params, x, y, 5)[-1]
    f0, f1 = flatten(params), flatten(after)
    for path in f0:
        same = np.array_equal(np.asarray(f0[path]), np.asarray(f1[path]))
        assert same == path.startswith("backbone/"), path
    # without freezing the same optimiser moves the backbone
    moved = flatten(_run(MOVING_TX, params, x, y, 1)[-1])
    assert not np.array_equal(np.asarray(moved["backbone/Conv_0/kernel"]), np.asarray(f0["backbone/Conv_0/kernel"]))


def test_freeze_rejects_unmatched_pattern(setup):
    with pytest.raises(TransferError, match="no parameter path matches"):
        freeze(MOVING_TX, setup[0], trainable="heads/")


def test_discriminative_lr_scales_sgd_updates(setup):
    params, x, y = setup
    grads = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(MODEL.apply({"params": p}, x)[0], y).mean()))(params)
    tx = discriminative_lr(optax.sgd, params, [(r"^backbone/Conv", 0.0), (r"^backbone/", 0.1)], base_lr=0.5)
    updates, _ = tx.update(grads, tx.init(params), params)
    fu, fg = flatten(updates), flatten(grads)
    for path in fu:
        scale = 0.0 if path.startswith("backbone/Conv") else 0.1 if path.startswith("backbone/") else 1.0
        np.testing.assert_allclose(np.asarray(fu[path]), -0.5 * scale * np.asarray(fg[path]), rtol=1e-6, atol=1e-12)
    labels = label_params(params, [(r"^backbone/Conv", "conv")], "rest")
    assert count_params(params, labels)["conv"] == 4 * 25 + 4 + 8 * 25 * 4 + 8


def test_gradual_unfreezing_at_the_right_step(setup):
    params, x, y = setup
    tx = gradual_unfreezing(MOVING_TX, params, [(r"^head/", 0), (r"^bottleneck/", 2), (r"^backbone/", 4)])
    history = [flatten(p) for p in _run(tx, params, x, y, 6)]
    f0 = flatten(params)

    def moved(step, prefix):  # did step `step` (1-based) change leaves under `prefix`?
        before = f0 if step == 1 else history[step - 2]
        return any(not np.array_equal(np.asarray(before[p]), np.asarray(history[step - 1][p])) for p in f0 if p.startswith(prefix))

    assert [moved(s, "head/") for s in range(1, 7)] == [True] * 6
    assert [moved(s, "bottleneck/") for s in range(1, 7)] == [False, False, True, True, True, True]
    assert [moved(s, "backbone/") for s in range(1, 7)] == [False] * 4 + [True, True]


def test_fit_with_frozen_backbone_learns_head(setup):
    params, x, y = setup
    tx = freeze(optax.adam(1e-2), params, r"^(head|bottleneck)/")
    out = fit(MODEL, {"params": params}, tx, x, y, steps=60, key=jax.random.key(1), batch_size=32)
    assert accuracy(MODEL, out, x, y) > accuracy(MODEL, {"params": params}, x, y)
    np.testing.assert_array_equal(np.asarray(out["params"]["backbone"]["Dense_0"]["kernel"]), np.asarray(params["backbone"]["Dense_0"]["kernel"]))


def test_freeze_on_train_state_tree_with_empty_aux(setup):
    params = {"model": setup[0], "aux": {}}
    tx = freeze(MOVING_TX, params, trainable=r"^model/head/")
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["aux"] == {}
    assert float(jnp.abs(updates["model"]["backbone"]["Conv_0"]["kernel"]).sum()) == 0.0
    assert float(jnp.abs(updates["model"]["head"]["kernel"]).sum()) > 0.0
