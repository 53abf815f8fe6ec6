"""tllib's Office-31 protocol pieces: the BatchNorm bottleneck, per-group learning rates, the sweep."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.bench.sweep import expand_sweep, validate_sweep
from da_framework.config import ConfigError, ExperimentConfig
from da_framework.models.classifier import Bottleneck
from da_framework.results import config_hash
from da_framework.train.optimizers import OptimizerError, build_optimizer


def test_batchnorm_bottleneck_matches_a_float64_reference_in_train_and_eval_mode():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, (12, 7)).astype(np.float32)
    module = Bottleneck(5, norm="batch")
    variables = module.init(jax.random.key(0), jnp.asarray(x), train=True)
    dense = {k: np.asarray(v, np.float64) for k, v in variables["params"]["Dense_0"].items()}
    h = x.astype(np.float64) @ dense["kernel"] + dense["bias"]
    mean, var = h.mean(0), h.var(0)
    want = np.maximum((h - mean) / np.sqrt(var + 1e-5), 0.0)  # scale 1, bias 0 at init
    y, new_state = module.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    stats = new_state["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(np.asarray(stats["mean"]), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats["var"]), 0.9 + 0.1 * var * 12 / 11, rtol=1e-5)  # torch: unbiased
    y_eval = module.apply({**variables, **new_state}, jnp.asarray(x), train=False)
    want_eval = np.maximum((h - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * 12 / 11 + 1e-5), 0.0)
    np.testing.assert_allclose(np.asarray(y_eval), want_eval, rtol=1e-5, atol=1e-5)


def test_lr_multipliers_equal_torch_sgd_parameter_groups():
    """Three Nesterov SGD steps with weight decay: backbone at 0.1x, head at 1x, as torch param groups."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    params = {"model": {"backbone": {"w": rng.normal(size=(3, 4))}, "head": {"w": rng.normal(size=(4, 2))}}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(3)]
    tx = build_optimizer("sgd", 0.05, weight_decay=1e-3, lr_multipliers={"^model/backbone/": 0.1})
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), g), state, p)
        p = optax.apply_updates(p, updates)

    tb = torch.tensor(params["model"]["backbone"]["w"], dtype=torch.float64, requires_grad=True)
    th = torch.tensor(params["model"]["head"]["w"], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([{"params": [tb], "lr": 0.005}, {"params": [th], "lr": 0.05}],
                          lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for g in grads:
        tb.grad = torch.tensor(g["model"]["backbone"]["w"])
        th.grad = torch.tensor(g["model"]["head"]["w"])
        opt.step()
    np.testing.assert_allclose(np.asarray(p["model"]["backbone"]["w"]), tb.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(p["model"]["head"]["w"]), th.detach().numpy(), rtol=1e-5, atol=1e-6)
    moved = np.abs(np.asarray(p["model"]["backbone"]["w"]) - params["model"]["backbone"]["w"]).max()
    assert 0 < moved < 0.2 * np.abs(np.asarray(p["model"]["head"]["w"]) - params["model"]["head"]["w"]).max()


def test_momentum_zero_is_plain_sgd_with_l2_weight_decay():
    """momentum=0 (tllib's AFN, FedAvg's clients): p <- p - lr (g + wd p), a closed form in float64."""
    rng = np.random.default_rng(2)
    p0, grads = rng.normal(size=5), [rng.normal(size=5) for _ in range(3)]
    tx = build_optimizer("sgd", 0.1, weight_decay=1e-2, momentum=0.0)
    p, state = jnp.asarray(p0, jnp.float32), None
    state = tx.init(p)
    want = p0.copy()
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
        p = optax.apply_updates(p, updates)
        want = want - 0.1 * (g + 1e-2 * want)
    np.testing.assert_allclose(np.asarray(p), want, rtol=1e-5, atol=1e-6)
    assert config_hash(ExperimentConfig(momentum=0.9)) == config_hash(ExperimentConfig())
    with pytest.raises(ConfigError, match="'momentum' has invalid value 1.5"):
        ExperimentConfig(momentum=1.5)


def test_lr_multipliers_errors_are_one_line():
    tx = build_optimizer("sgd", 0.1, lr_multipliers={"^model/backbon/": 0.1})
    with pytest.raises(OptimizerError, match="'\\^model/backbon/' matches no parameter; paths look like: model/b"):
        tx.init({"model": {"backbone": {"w": jnp.zeros(2)}}})
    with pytest.raises(ConfigError, match="lr_multipliers .*values numbers >= 0"):
        ExperimentConfig(lr_multipliers={"head": -1})


def test_new_keys_keep_old_config_hashes_and_train_end_to_end():
    from da_framework.train.loop import train

    base = ExperimentConfig(method="dann")
    assert config_hash(base.replace(bottleneck_norm="layer", lr_multipliers={})) == config_hash(base)
    assert config_hash(base.replace(bottleneck_norm="batch")) != config_hash(base)
    config = ExperimentConfig(model="mlp", model_kwargs={"hidden": (16,)}, bottleneck_dim=8, bottleneck_norm="batch",
                              lr_multipliers={"^model/backbone/": 0.0}, method="dann", steps=3, batch_size=8,
                              log_every=1, eval_batch_size=256)
    result = train(config)
    frozen = train(config.replace(lr_multipliers={"^model/": 0.0}))  # the whole model stays at its init
    before, after = frozen.state.params["model"], result.state.params["model"]
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before["backbone"], after["backbone"])))  # scale 0
    assert not np.array_equal(before["head"]["kernel"], after["head"]["kernel"])
    stats = result.state.model_state["batch_stats"]["bottleneck"]["BatchNorm_0"]["mean"]
    assert np.abs(np.asarray(stats)).max() > 0  # running statistics carried in the train state


def test_office31_sweep_expands_with_per_method_settings(tmp_path, monkeypatch):
    from da_framework.bench.sweep import load_sweep

    monkeypatch.setenv("DA_RESNET50_WEIGHTS", "/nowhere/resnet50.pth")
    runs = expand_sweep(load_sweep("office31_tllib"), tmp_path)
    assert len(runs) == 9 * 6 * 3
    mdd = next(r.config for r in runs if r.sweep_method == "mdd")
    dann = next(r.config for r in runs if r.sweep_method == "dann")
    assert (mdd.learning_rate, mdd.lr_schedule, mdd.bottleneck_dim, mdd.weight_decay) == (0.004, "inv:0.0002", 1024, 5e-4)
    assert (dann.learning_rate, dann.lr_schedule, dann.bottleneck_dim, dann.batch_size, dann.steps) == (0.01, "inv:0.001", 256, 32, 20_000)
    assert dann.bottleneck_norm == "batch" and dict(dann.lr_multipliers) == {"^model/backbone/": 0.1}
    assert dict(dann.model_kwargs) == {"pretrained": "/nowhere/resnet50.pth"}
    assert {r.config.source for r in runs} == {"office31/amazon", "office31/dslr", "office31/webcam"}
    monkeypatch.delenv("DA_RESNET50_WEIGHTS")
    with pytest.raises(ConfigError, match="set DA_RESNET50_WEIGHTS"):
        load_sweep("office31_tllib")


@pytest.mark.parametrize(("settings", "message"), [
    ({"mdd": {"learning_rate": 0.1}}, "names 'mdd', which is not in the sweep's methods"),
    ({"dann": {"seed": 3}}, "may not set seed"),
    ({"dann": {"lr": 3}}, "may not set lr"),
    ({"dann": {"learning_rate": 3}}, "which the grid sweeps"),
])
def test_bad_method_settings_name_the_problem(settings, message):
    sweep = {"name": "t", "methods": ["source_only", "dann"], "pairs": [("digits/source", "digits/rotate")],
             "seeds": [0], "grid": {"learning_rate": [0.1]}, "method_settings": settings}
    with pytest.raises(ConfigError, match=message):
        validate_sweep(sweep)

