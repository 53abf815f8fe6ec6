"""DomainBed's Adam reset when IRM / VREx / IB penalties switch on (LossSpec.optimizer_reset)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.losses.registry import LossError, register_loss
from da_framework.models.registry import make_model
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.step import make_train_step, optimizer_resets, reset_fires

LR = 1e-2


def _setup(spec: str):
    model = make_model("mlp", 3, None, hidden=(8,))
    method = parse_method(spec)
    tx = optax.adam(LR)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(3 * 6, 5)), jnp.float32)
    source = {"image": xs, "label": jnp.asarray(np.tile(np.arange(3), 6), jnp.int32)}
    target = {"image": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}
    state = init_train_state(jax.random.key(0), model, method, tx, source["image"], target["image"], source["label"])
    step = jax.jit(make_train_step(model, method, tx, total_steps=4, num_sources=3))
    return state, step, source, target, tx


def test_reset_fires_once_at_domainbeds_update_count():
    # a 10-step run counted in DomainBed's 5001 steps: count = round(step / 10 * 5001); 500 is first reached at step 1
    fires = [bool(reset_fires(jnp.int32(s), 10, 500.0, 5001.0)) for s in range(10)]
    assert fires == [False, True] + [False] * 8
    assert [bool(reset_fires(jnp.int32(s), 4, 2.0, 4.0)) for s in range(4)] == [False, False, True, False]
    assert not any(bool(reset_fires(jnp.int32(s), 4, 0.0, 4.0)) for s in range(4))  # step 0's state is fresh already
    assert optimizer_resets(parse_method("cross_entropy + irm(irm_penalty_anneal_iters=7) + ib")) == [(7.0, 5001.0, None), (500.0, 5001.0, None)]
    assert optimizer_resets(parse_method("cross_entropy + coral_envs")) == []


def test_the_step_at_the_switch_starts_from_a_fresh_adam():
    state, step, source, target, tx = _setup("cross_entropy + irm(irm_penalty_anneal_iters=2, steps_of=4)")
    states = [state]
    for s in range(3):
        states.append(step(states[-1], source, target, jax.random.key(s))[0])
    s2 = states[2]
    fresh = step(s2.replace(opt_state=tx.init(s2.params)), source, target, jax.random.key(2))[0]
    for a, b in zip(jax.tree.leaves(states[3].params), jax.tree.leaves(fresh.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Adam's first step from a fresh state moves every parameter with a non-tiny gradient by lr (m / sqrt(v) = sign(g))
    delta = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                            for a, b in zip(jax.tree.leaves(states[3].params), jax.tree.leaves(s2.params))])
    moved = delta[delta > 1e-6]
    np.testing.assert_allclose(moved, LR, rtol=1e-3)
    # the step before carried its Adam state on: with a fresh one it would differ
    s1 = states[1]
    other = step(s1.replace(opt_state=tx.init(s1.params)), source, target, jax.random.key(1))[0]
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(states[2].params), jax.tree.leaves(other.params)))


def test_a_reset_hyperparameter_must_exist():
    with pytest.raises(LossError, match="optimizer_reset names 'nope'"):
        @register_loss("_bad_reset", description="x", reference="x", optimizer_reset="nope", overwrite=True)
        def _bad(inputs, anneal: float = 1.0):
            return jnp.zeros(())
