"""The training core end to end: one compilation, determinism, multi-device equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ConfigError, ExperimentConfig, from_dict
from da_framework.data import get_domain
from da_framework.models import make_model
from da_framework.train import (
    NonFiniteLossError,
    init_train_state,
    make_mesh,
    make_optimizer,
    make_train_step,
    parse_method,
    replicate,
    shard_batch,
    train,
)
from da_framework.train.loop import params_checksum

TINY = dict(model="lenet", model_kwargs={"channels": (4, 8), "dense": 32}, bottleneck_dim=16, batch_size=16, log_every=5)


def reference_predictions(r, domain: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, label) of the run's final model on a whole split: one unpadded forward pass."""
    dom = get_domain(domain)
    data = dom.split(split).arrays
    cfg = r.config
    model = make_model(cfg.model, dom.num_classes, cfg.bottleneck_dim, **cfg.model_kwargs)
    variables = {"params": r.state.params["model"], **r.state.model_state}
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(data[dom.input_key]))
    return np.argmax(np.asarray(logits, np.float64), -1), np.asarray(data["label"])


def test_short_run_compiles_once_and_reports_metrics():
    r = train(ExperimentConfig(method="dann", steps=12, **TINY))
    assert r.compile_count == 1
    m = r.metrics
    # the reported accuracies are those of the final model, recomputed here without the
    # evaluator's padded batches (the test split has 179 examples, eval batches 512)
    pred, label = reference_predictions(r, r.config.target, "test")
    assert m["target_test_accuracy"] == pytest.approx(np.mean(pred == label), abs=1e-12)
    per_class = [np.mean(pred[label == c] == c) for c in range(10)]
    np.testing.assert_allclose(m["target_test_per_class_accuracy"], per_class, atol=1e-12)
    assert m["target_test_mean_class_accuracy"] == pytest.approx(np.mean(per_class), abs=1e-12)
    pred, label = reference_predictions(r, r.config.source, "val")
    assert m["source_val_accuracy"] == pytest.approx(np.mean(pred == label), abs=1e-12)
    assert [h["step"] for h in r.history if "loss" in h] == [5, 10, 12]
    assert int(r.state.step) == 12


@pytest.mark.slow  # CI time; the same property is covered faster elsewhere
def test_same_seed_same_metrics_different_seed_different():
    cfg = ExperimentConfig(method="dan", steps=6, **TINY)
    a, b = train(cfg), train(cfg)
    assert a.history == b.history
    assert params_checksum(a.state) == params_checksum(b.state)
    c = train(cfg.replace(seed=1))
    assert params_checksum(c.state) != params_checksum(a.state)


def test_training_learns_source_task():
    r = train(ExperimentConfig(target="digits/clean", method="source_only", steps=150, **{**TINY, "batch_size": 32}))
    assert r.metrics["source_val_accuracy"] > 0.8
    assert r.metrics["target_test_accuracy"] > 0.7  # no shift: source model transfers


def _setup(method_spec, batch=16):
    model = make_model("lenet", 10, 16, channels=(4, 8), dense=32)
    method = parse_method(method_spec)
    tx = make_optimizer(ExperimentConfig())
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.random((batch, 16, 16, 1)), jnp.float32)
    xt = jnp.asarray(rng.random((batch, 16, 16, 1)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    step = jax.jit(make_train_step(model, method, tx, total_steps=10))
    return state, step, {"image": xs, "label": ys}, {"image": xt}


@pytest.mark.parametrize("spec", ["dann", "dan"])
def test_four_device_step_matches_one_device(spec):
    assert jax.device_count() >= 4, "tests/conftest.py sets 4 CPU devices"
    state, step, sb, tb = _setup(spec)
    key = jax.random.key(3)
    one_state, one_metrics = step(state, sb, tb, key)
    mesh = make_mesh(4)
    sharded_sb, sharded_tb = shard_batch(sb, mesh), shard_batch(tb, mesh)
    assert len(sharded_sb["image"].sharding.device_set) == 4
    four_state, four_metrics = step(replicate(state, mesh), sharded_sb, sharded_tb, key)
    for k in one_metrics:
        np.testing.assert_allclose(four_metrics[k], one_metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(one_state.params), jax.tree.leaves(four_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # CI time; the same property is covered faster elsewhere
def test_multi_device_run_through_config():
    r1 = train(ExperimentConfig(method="dan", steps=4, **TINY))
    r4 = train(ExperimentConfig(method="dan", steps=4, num_devices=4, **TINY))
    np.testing.assert_allclose(r4.history[0]["loss"], r1.history[0]["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        train(ExperimentConfig(method="dan", steps=2, num_devices=4, **{**TINY, "batch_size": 10}))


def test_step_does_not_recompile_for_new_batches():
    state, step, sb, tb = _setup("dann")
    for i in range(3):
        sb = {"image": sb["image"] + 0.1, "label": sb["label"]}
        state, _ = step(state, sb, tb, jax.random.key(i))
    assert step._cache_size() == 1


def test_nan_loss_is_reported_clearly():
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step .*learning_rate"):
        train(ExperimentConfig(method="source_only", steps=10, learning_rate=1e30, optimizer="sgd", **TINY))


def test_bad_config_keys_and_values():
    with pytest.raises(ConfigError, match="unknown config key.*lerning_rate.*valid keys: .*learning_rate"):
        from_dict({"lerning_rate": 0.1})
    with pytest.raises(ConfigError, match="optimizer"):
        ExperimentConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="'steps'"):
        ExperimentConfig(steps=0)


def test_finetune_fit_stops_on_a_non_finite_loss():
    """The shared finite-check (train/finite.py) guards the loops outside train() too."""
    import numpy as np
    import optax

    from da_framework.models.registry import make_model
    from da_framework.train.finite import NonFiniteLossError
    from da_framework.transfer.finetune import fit

    model = make_model("mlp", 3, None)
    x = np.random.default_rng(0).random((16, 4)).astype(np.float32)
    y = np.arange(16) % 3
    variables = model.init(jax.random.key(0), jnp.asarray(x))
    ok = fit(model, dict(variables), optax.sgd(0.1), x, y, 3, jax.random.key(1))
    assert jax.tree.structure(ok) == jax.tree.structure(dict(variables))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step [12] \(seen at the metric fetch of step 3\).*lower the learning rate"):
        fit(model, dict(variables), optax.sgd(1e30), x * 1e30, y, 3, jax.random.key(1))
