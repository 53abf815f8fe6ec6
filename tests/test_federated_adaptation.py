"""Federated transfer / domain adaptation, the entropy loss, configs and the ``da fed`` command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from da_framework.config import ConfigError, ExperimentConfig
from da_framework.data import get_domain
from da_framework.federated.adaptation import adaptation_method
from da_framework.federated.config import FedConfig, fed_config_from_dict
from da_framework.federated.runner import run_federated
from da_framework.losses import get_loss
from da_framework.losses.entropy import entropy_loss as prediction_entropy
from da_framework.losses.registry import LossError
from da_framework.models import make_model

TINY = dict(model="mlp", model_kwargs={"hidden": (32,)}, bottleneck_dim=16, batch_size=32, eval_batch_size=256)


def test_entropy_loss_matches_float64_numpy_and_bounds():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = -np.mean(np.sum(p * np.log(p), 1))
    np.testing.assert_allclose(prediction_entropy(jnp.asarray(logits, jnp.float32)), ref, rtol=1e-5)
    assert float(prediction_entropy(jnp.zeros((3, 5)))) == pytest.approx(np.log(5), rel=1e-6)  # uniform: max
    assert float(prediction_entropy(jnp.array([[100.0, 0, 0]]))) < 1e-6  # one-hot: zero
    assert "Grandvalet" in get_loss("entropy").reference
    with pytest.raises(LossError, match=r"2-D \(batch, classes\)"):
        prediction_entropy(jnp.zeros(3))


def test_adaptation_spec_validation():
    assert adaptation_method(None) is None
    assert adaptation_method("0.1*entropy").terms[0].weight == 0.1
    with pytest.raises(LossError, match="cross_entropy"):
        adaptation_method("cross_entropy + entropy")
    with pytest.raises(LossError, match="keeps state across steps"):
        adaptation_method("1.0*dann")


def test_fed_config_validation_names_the_problem():
    with pytest.raises(ConfigError, match="valid keys"):
        fed_config_from_dict({"round": 3})
    with pytest.raises(ConfigError, match="server_optimizer"):
        FedConfig(server_optimizer="adagrad")
    with pytest.raises(ConfigError, match="clip_norm"):
        FedConfig(noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="clients_per_round"):
        FedConfig(num_clients=3, clients_per_round=4)


def test_federated_domain_adaptation_from_a_source_pretrained_model():
    cfg = ExperimentConfig(**TINY)
    fed = FedConfig(
        rounds=1, num_clients=3, clients_per_round=3, partition="domain", domains=("digits/source", "digits/blur"),
        target_domains=("digits/rotate",), adaptation="0.1*entropy", pretrain_steps=40, local_batch_size=32,
        eval_every=1, client_lr=0.05,
    )
    a = run_federated(cfg, fed)
    assert [c.labeled for c in a.clients] == [True, True, False]
    assert [h["round"] for h in a.history] == [1]
    domains = ("digits/source", "digits/blur", "digits/rotate")
    assert set(a.metrics) == {"test_accuracy", "target_test_accuracy", *(f"test_accuracy/{d}" for d in domains)}
    # starting from a source-pretrained model, the source accuracy is far above chance
    assert a.metrics["test_accuracy/digits/source"] > 0.3
    # each reported accuracy is the returned global model's, recomputed in one unpadded forward pass
    model = make_model("mlp", 10, 16, hidden=(32,))
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)[0])
    for d in domains:
        test = get_domain(d).split("test").arrays
        pred = np.argmax(np.asarray(forward(a.params, jnp.asarray(test["image"]))), -1)
        assert a.metrics[f"test_accuracy/{d}"] == pytest.approx(np.mean(pred == test["label"]), abs=1e-12), d
    assert a.metrics["test_accuracy"] == pytest.approx(np.mean([a.metrics[f"test_accuracy/{d}"] for d in domains]))
    assert a.metrics["target_test_accuracy"] == a.metrics["test_accuracy/digits/rotate"]


def test_da_fed_command_writes_a_record(tmp_path):
    from da_framework.cli import app

    runner = CliRunner()
    res = runner.invoke(app, [
        "fed", "fed_digits_domain_skew", "--rounds", "1", "--results-dir", str(tmp_path),
        "--set", "model=mlp", "--set", "model_kwargs={'hidden': (16,)}", "--set", "bottleneck_dim=16",
        "--set", "num_clients=4", "--set", "clients_per_round=2",
    ])
    assert res.exit_code == 0, res.output
    files = list(tmp_path.rglob("seed0.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    assert rec["format"] == "da_framework.fed/1" and rec["fed_config"]["rounds"] == 1
    assert rec["seed"] == 0 and "git_commit" in rec and "versions" in rec and "platform" in rec
    # the record holds the run's final evaluation: per domain a whole number of correct test
    # examples, their mean, and the target domain's accuracy as target_test_accuracy
    m, fed_cfg = rec["metrics"], rec["fed_config"]
    assert m == {k: v for k, v in rec["history"][-1].items() if k.startswith(("test_accuracy", "target_test"))}
    domains = [*fed_cfg["domains"], *fed_cfg["target_domains"]]
    for d in domains:
        n = len(get_domain(d).split("test"))
        assert m[f"test_accuracy/{d}"] * n == pytest.approx(round(m[f"test_accuracy/{d}"] * n), abs=1e-9), d
    assert m["test_accuracy"] == pytest.approx(np.mean([m[f"test_accuracy/{d}"] for d in domains]))
    assert m["target_test_accuracy"] == m["test_accuracy/digits/rotate"]
    bad = runner.invoke(app, ["fed", "fed_digits_domain_skew", "--set", "rounds_=2"])
    assert bad.exit_code == 2 and "unknown config key" in bad.output
