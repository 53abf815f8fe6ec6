"""``forward_target=False``: the standard step runs the model on the source batch alone."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError
from da_framework.models.registry import make_model
from da_framework.results import semantic_config
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.step import make_train_step
from da_framework.train.trainers import get_trainer


def _batches(n_sources: int = 3, per: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    source = {"image": jnp.asarray(rng.normal(size=(n_sources * per, 5)), jnp.float32),
              "label": jnp.asarray(np.tile(np.arange(3), n_sources * per // 3), jnp.int32)}
    target = {"image": jnp.asarray(rng.normal(size=(per, 5)), jnp.float32)}
    return source, target


def _run(spec: str, forward_target: bool, source, target, norm: str = "layer", steps: int = 3, n_sources: int = 3):
    model = make_model("mlp", 3, 4, bottleneck_norm=norm, hidden=(8,))
    method = parse_method(spec)
    tx = optax.sgd(0.1, momentum=0.9)
    state = init_train_state(jax.random.key(0), model, method, tx, source["image"], target["image"], source["label"])
    step = jax.jit(make_train_step(model, method, tx, total_steps=steps, num_sources=n_sources,
                                   forward_target=forward_target))
    for s in range(steps):
        state, metrics = step(state, source, target, jax.random.key(s))
    return state, metrics


def _stats(model_state) -> dict[str, np.ndarray]:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(model_state)[0]}
    (mean,), (var,) = ([v for k, v in flat.items() if k.endswith(end)] for end in ("/mean", "/var"))
    return {"mean": mean, "var": var}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("spec", ["cross_entropy + irm(irm_penalty_anneal_iters=1, steps_of=3)", "group_dro",
                                  "cross_entropy + coral_envs"])
def test_dg_methods_train_the_same_without_the_target_pass(spec):
    source, target = _batches()
    joint, m_joint = _run(spec, True, source, target)
    alone, m_alone = _run(spec, False, source, target)
    # float32 rounding of differently shaped products only (IRM's weight 100 amplifies it; the
    # same check with float64 parameters and inputs agrees to 0.0)
    for a, b in zip(_leaves((joint.params, joint.term_states)), _leaves((alone.params, alone.term_states))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(m_joint["loss"]), float(m_alone["loss"]), rtol=1e-4)
    # the update moved the parameters (so the equality above is not of two untouched states)
    fresh = _run(spec, False, source, target, steps=1)[0]
    assert max(np.max(np.abs(a - b)) for a, b in zip(_leaves(alone.params), _leaves(fresh.params))) > 1e-3


def test_the_target_batch_is_not_read_at_all():
    source, target = _batches()
    poisoned = {"image": jnp.full_like(target["image"], jnp.nan)}
    clean, _ = _run("cross_entropy + vrex", False, source, target)
    nan_target, metrics = _run("cross_entropy + vrex", False, source, poisoned)
    assert np.isfinite(float(metrics["loss"]))
    for a, b in zip(_leaves(clean.params), _leaves(nan_target.params)):
        np.testing.assert_array_equal(a, b)
    # the joint pass does read it: with a BatchNorm bottleneck the NaN rows reach the source loss
    _, m = _run("cross_entropy", True, source, poisoned, norm="batch", steps=1)
    assert np.isnan(float(m["loss"]))
    _, m = _run("cross_entropy", False, source, poisoned, norm="batch", steps=1)
    assert np.isfinite(float(m["loss"]))


def test_batch_statistics_come_from_the_source_batch_alone():
    # A joint pass over [x_s, x_s] has the same BatchNorm mean and (biased) variance as x_s alone,
    # and the loss reads the source rows only: so it is the reference for the source-only pass.
    source, target = _batches(n_sources=1, per=12, seed=1)
    copy = {"image": source["image"]}
    ref, _ = _run("cross_entropy", True, source, copy, norm="batch", n_sources=1)
    alone, _ = _run("cross_entropy", False, source, target, norm="batch", n_sources=1)
    joint, _ = _run("cross_entropy", True, source, target, norm="batch", n_sources=1)
    for a, b in zip(_leaves(ref.params), _leaves(alone.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    ref_stats, stats = _stats(ref.model_state), _stats(alone.model_state)
    np.testing.assert_allclose(stats["mean"], ref_stats["mean"], rtol=1e-5, atol=1e-6)
    # running var (start 1, momentum 0.9, 3 steps) gathers torch's unbiased var * n / (n - 1):
    # n = 12 rows here, 24 in the duplicated reference
    decay = 0.9 ** 3
    np.testing.assert_allclose((stats["var"] - decay) * 11 / 12, (ref_stats["var"] - decay) * 23 / 24, rtol=1e-5)
    # and the joint pass over another target batch gives other statistics
    assert not all(np.allclose(a, b, atol=1e-4) for a, b in zip(_leaves(joint.model_state), _leaves(alone.model_state)))


@pytest.mark.parametrize("spec", ["cross_entropy + dann", "cross_entropy + mmd", "cross_entropy + entropy"])
def test_a_term_reading_the_target_is_a_one_line_error(spec):
    source, target = _batches(n_sources=1, per=6)
    with pytest.raises(LossError, match="reads the target batch.*set forward_target=True"):
        _run(spec, False, source, target, n_sources=1, steps=1)


def test_trainers_that_train_on_the_target_refuse_and_dg_trainers_ignore_it():
    with pytest.raises(LossError, match="trainer 'mcd'.*set forward_target=True"):
        get_trainer("auto", parse_method("mcd"), forward_target=False)
    assert get_trainer("auto", parse_method("mldg"), forward_target=False) is get_trainer("auto", parse_method("mldg"))


def test_the_key_is_hashed_only_when_set():
    base = ExperimentConfig()
    assert "forward_target" not in semantic_config(base)
    assert semantic_config(dataclasses.replace(base, forward_target=False))["forward_target"] is False


def test_domainbed_protocol_forwards_the_training_environments_only():
    from da_framework.bench.domainbed import domainbed_dg

    assert domainbed_dg("rdigits", "0")["forward_target"] is False
