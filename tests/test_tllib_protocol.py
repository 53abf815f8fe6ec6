"""The optimiser side of the tllib digits protocol: inv:<gamma> schedule, SGD as tllib's torch SGD."""

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.bench.sweep import expand_sweep, load_sweep, run_one
from da_framework.config import ConfigError, ExperimentConfig
from da_framework.experiment_files import load_experiment
from da_framework.train.loop import make_optimizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_inv_gamma_schedule_is_per_step_and_independent_of_steps():
    """With adam and a constant gradient 1 every update is -lr_t (bias-corrected moments = 1)."""
    for steps in (10, 100_000):
        config = ExperimentConfig(optimizer="adam", learning_rate=0.01, lr_schedule="inv:0.01", steps=steps)
        tx = make_optimizer(config)
        p = jnp.zeros(())
        state = tx.init(p)
        got = []
        for _ in range(201):
            u, state = tx.update(jnp.ones(()), state, p)
            got.append(-float(u))
        t = np.arange(201, dtype=np.float64)
        np.testing.assert_allclose(got, 0.01 * (1 + 0.01 * t) ** -0.75, rtol=1e-4)


def test_sgd_matches_torch_sgd_nesterov_with_coupled_weight_decay():
    """tllib: torch SGD(lr, momentum=0.9, weight_decay=wd, nesterov=True); reference in float64."""
    lr, wd, m = 0.1, 1e-3, 0.9
    config = ExperimentConfig(optimizer="sgd", learning_rate=lr, lr_schedule="constant", weight_decay=wd)
    tx = make_optimizer(config)
    p = jnp.array([1.0, -2.0])
    state = tx.init(p)
    ref, buf = np.array([1.0, -2.0]), None
    for _ in range(5):
        g = 3.0 * p  # gradient of 1.5 |p|^2
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        d = 3.0 * ref + wd * ref  # torch: d_p = grad + wd * p
        buf = d.copy() if buf is None else m * buf + d
        ref = ref - lr * (d + m * buf)  # nesterov
    np.testing.assert_allclose(np.asarray(p), ref, rtol=1e-6)


@pytest.mark.parametrize("bad", ["inv:", "inv:0", "inv:-1", "inv:x", "inv:nan", "invx"])
def test_bad_inv_schedule_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="inv:<gamma>"):
        ExperimentConfig(lr_schedule=bad)


EXPERIMENTS = {
    "mnist_usps_tllib": ("mnist", "usps", 0.01, 50_000, 128),
    "usps_mnist_tllib": ("usps", "mnist", 0.1, 50_000, 128),
    "mnist_usps_short": ("mnist", "usps", 0.01, 5_000, 64),
    "usps_mnist_short": ("usps", "mnist", 0.1, 5_000, 64),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_tllib_digits_experiments(name):
    c = load_experiment(name)
    assert (c.source, c.target, c.learning_rate, c.steps, c.batch_size) == EXPERIMENTS[name]
    assert (c.model, dict(c.model_kwargs), c.bottleneck_dim) == (
        "lenet_tllib",
        {"input_mean": 0.5, "input_std": 0.5},
        256,
    )
    assert (c.optimizer, c.lr_schedule, c.weight_decay) == ("sgd", "inv:0.001", 1e-3)


def test_digits_real_short_sweep_expands_on_the_short_protocol(tmp_path):
    runs = expand_sweep(load_sweep("digits_real_short"), tmp_path)
    assert len(runs) == 7 * 2 * 3
    assert {r.sweep_method for r in runs} == {"source_only", "dann", "dan", "jan", "cdan", "mcc", "mdd"}
    short = load_experiment("mnist_usps_short")
    keys = [k for k in short.to_dict() if k not in ("name", "method", "seed", "checkpoint_every", "checkpoint_dir")]
    first = next(r for r in runs if (r.config.source, r.config.target) == ("mnist", "usps"))
    assert {k: first.config.to_dict()[k] for k in keys} == {k: short.to_dict()[k] for k in keys}


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mnist" / "mnist.npz").is_file(), reason="no ../shared/data here")
def test_one_run_of_digits_real_short_end_to_end(tmp_path):
    runs = expand_sweep(load_sweep("digits_real_short"), tmp_path)
    run = next(r for r in runs if r.sweep_method == "dann" and r.config.source == "mnist" and r.config.seed == 0)
    config = run.config.replace(steps=3, eval_every=0, checkpoint_every=0, checkpoint_dir=None, data_dir=str(SHARED))
    record = run_one(dataclasses.replace(run, config=config))
    assert run.path.is_file() and record["config"]["steps"] == 3
    assert record["config"]["model"] == "lenet_tllib" and record["config"]["source"] == "mnist"
    assert 0.0 <= record["metrics"]["target_test_accuracy"] <= 1.0 and "selection" in record


def test_full_protocol_sweeps_keep_tllibs_per_method_learning_rates(tmp_path, monkeypatch):
    from da_framework.bench.sweep import expand_sweep, load_sweep

    for pair, lr in ((("mnist", "usps"), 0.01), (("usps", "mnist"), 0.1)):
        runs = expand_sweep(load_sweep(f"digits_tllib_{pair[0]}_{pair[1]}"), tmp_path)
        assert len(runs) == 8 * 3 and {r.config.seed for r in runs} == {0, 1, 2}
        by_method = {(r.sweep_method or r.config.method): r.config for r in runs}
        assert by_method["mdd"].learning_rate == 0.01  # mdd.sh: 0.01 on both pairs
        assert {c.learning_rate for m, c in by_method.items() if m != "mdd"} == {lr}
        assert {(c.steps, c.batch_size, c.eval_every) for c in by_method.values()} == {(50_000, 128, 2_500)}
        assert all(c.source_names == (pair[0],) and c.target_names == (pair[1],) for c in by_method.values())
    monkeypatch.setenv("DA_TLLIB_STEPS", "20")  # a smoke test gets its own folder and 20-step runs
    sweep = load_sweep("digits_tllib_usps_mnist")
    assert sweep["name"] == "digits_tllib_usps_mnist_steps20"
    assert {r.config.steps for r in expand_sweep(sweep, tmp_path)} == {20}
