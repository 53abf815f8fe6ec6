"""tllib's batch-normalised domain discriminator: the normalisation and the whole D against NumPy
float64 (and PyTorch's BatchNorm1d in training mode when torch is installed), the default D left
as it was, and the ``dann`` / ``adda`` options by name with one-line errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.adversarial import BatchStatNorm, DomainDiscriminator
from da_framework.losses.registry import LossError
from da_framework.train import train
from da_framework.train.method import parse_method


def _bn(x, scale, bias, eps=1e-5):
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)  # biased, as BatchNorm1d normalises in training mode
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_batch_stat_norm_is_training_mode_batch_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)) * 3 + 1
    params = {"scale": rng.normal(size=5), "bias": rng.normal(size=5)}
    got = BatchStatNorm().apply({"params": jax.tree.map(jnp.asarray, params)}, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), _bn(x, params["scale"], params["bias"]), rtol=1e-5, atol=1e-5)
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm1d(5).double().train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(params["scale"]))
        bn.bias.copy_(torch.tensor(params["bias"]))
        want = bn(torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_batch_normalised_discriminator_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4))
    d = DomainDiscriminator((6, 3), batch_norm=True)
    params = d.init(jax.random.key(0), jnp.zeros((8, 4)))["params"]
    assert sorted(params) == ["BatchStatNorm_0", "BatchStatNorm_1", "Dense_0", "Dense_1", "Dense_2"]
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = x
    for i in range(2):
        h = h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
        h = np.maximum(_bn(h, p[f"BatchStatNorm_{i}"]["scale"], p[f"BatchStatNorm_{i}"]["bias"]), 0)
    want = h @ p["Dense_2"]["kernel"][:, 0] + p["Dense_2"]["bias"][0]
    got = d.apply({"params": params}, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_default_discriminator_is_unchanged():
    params = DomainDiscriminator().init(jax.random.key(0), jnp.zeros((2, 4)))["params"]
    assert sorted(params) == ["Dense_0", "Dense_1", "Dense_2"]
    assert params["Dense_0"]["kernel"].shape == (4, 256) and params["Dense_1"]["kernel"].shape == (256, 256)


TINY = {"source": "digits/source", "target": "digits/rotate", "model": "lenet",
        "model_kwargs": {"channels": (4, 8), "dense": 16}, "bottleneck_dim": None, "batch_size": 16, "log_every": 1}


@pytest.mark.parametrize("spec,disc_key", [
    ("cross_entropy + dann(hidden_size=32, disc_batch_norm=True)", "dann"),
    ("cross_entropy + adda(pretrain_steps=2, hidden_size=32, disc_batch_norm=True)", "adda"),
])
def test_runs_by_name_with_tllibs_discriminator(spec, disc_key):
    result = train(ExperimentConfig(method=spec, steps=4, **TINY))
    disc = result.state.params["aux"][disc_key]
    assert disc["Dense_0"]["kernel"].shape[1] == 32 and "BatchStatNorm_1" in disc
    assert all(np.isfinite(h["loss"]) for h in result.history if "loss" in h)


@pytest.mark.parametrize("spec,message", [
    ("cross_entropy + dann(disc_batch_norm=1)", "dann: disc_batch_norm must be True or False, got 1"),
    ("cross_entropy + dann(hidden_size=0)", "dann: hidden_size must be an integer >= 1, got 0"),
    ("cross_entropy + adda(disc_batch_norm=yes)", "adda: disc_batch_norm must be True or False"),
])
def test_bad_values_fail_in_one_line(spec, message):
    with pytest.raises(LossError, match=message) as err:
        parse_method(spec)
    assert "\n" not in str(err.value)
