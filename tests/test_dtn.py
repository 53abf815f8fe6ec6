"""``dtn`` against tllib's DTN (tllib/vision/models/digits.py) rebuilt in torch on the same weights.

Eval mode: the same features in float64 from the same weights and running statistics.  Train
mode: the same batch-normalised output and the same running-statistics update (dropout off,
rates set to 0 on both sides, so only the BatchNorm path differs from eval).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.models.dtn import DTN
from da_framework.models.registry import make_model

torch = pytest.importorskip("torch")


def _tllib_dtn(rates=(0.1, 0.3, 0.5), dense_rate=0.5):
    nn = torch.nn
    layers = []
    for cin, cout, rate in zip((3, 64, 128), (64, 128, 256), rates):
        layers += [nn.Conv2d(cin, cout, kernel_size=5, stride=2, padding=2), nn.BatchNorm2d(cout), nn.Dropout2d(rate), nn.ReLU()]
    layers += [nn.Flatten(start_dim=1), nn.Linear(256 * 4 * 4, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(dense_rate)]
    return nn.Sequential(*layers).double()


def _load(net, variables):
    p, s = variables["params"], variables["batch_stats"]
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in net if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(t(p[f"Conv_{i}"]["kernel"]).permute(3, 2, 0, 1))
            conv.bias.copy_(t(p[f"Conv_{i}"]["bias"]))
        # Flax flattens (H, W, C), torch (C, H, W): permute the dense kernel's input rows.
        dense = net[13]
        k = t(p["Dense_0"]["kernel"]).reshape(4, 4, 256, 512).permute(2, 0, 1, 3).reshape(4096, 512)
        dense.weight.copy_(k.T)
        dense.bias.copy_(t(p["Dense_0"]["bias"]))
        for i, bn in enumerate(bns):
            bn.weight.copy_(t(p[f"BatchNorm_{i}"]["scale"]))
            bn.bias.copy_(t(p[f"BatchNorm_{i}"]["bias"]))
            bn.running_mean.copy_(t(s[f"BatchNorm_{i}"]["mean"]))
            bn.running_var.copy_(t(s[f"BatchNorm_{i}"]["var"]))


def _perturbed(variables, rng):
    """Non-trivial scales, biases and running statistics, so every tensor is exercised."""
    params = jax.tree.map(lambda a: a, variables["params"])
    stats = {}
    for name, st in variables["batch_stats"].items():
        c = st["mean"].shape[0]
        params[name] = {"scale": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
                        "bias": jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)}
        stats[name] = {"mean": jnp.asarray(rng.normal(0, 0.5, c), jnp.float32),
                       "var": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)}
    return {"params": params, "batch_stats": stats}


def test_eval_forward_equals_tllibs_dtn():
    x = np.asarray(jax.random.normal(jax.random.key(0), (4, 32, 32, 3)))
    model = DTN()
    variables = _perturbed(model.init(jax.random.key(1), jnp.asarray(x)), np.random.default_rng(0))
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        ours = np.asarray(jax.jit(model.apply)(v64, jnp.asarray(x, jnp.float64)))
    net = _tllib_dtn()
    _load(net, variables)
    net.eval()
    with torch.no_grad():
        ref = net(torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)).numpy()
    assert ours.shape == (4, 512)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)  # BatchNorm computes in float32
    assert (ref > 0).mean() > 0.2  # the ReLU leaves a real share of features on


def test_train_mode_batch_norm_and_its_statistics_equal_torchs():
    x = np.asarray(jax.random.normal(jax.random.key(2), (6, 32, 32, 3)))
    model = DTN(channel_dropout=(0.0, 0.0, 0.0), dense_dropout=0.0)
    variables = _perturbed(model.init(jax.random.key(3), jnp.asarray(x)), np.random.default_rng(1))
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        ours, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v64, jnp.asarray(x, jnp.float64))
        ours = np.asarray(ours)
        updated = jax.tree.map(np.asarray, updated["batch_stats"])
    net = _tllib_dtn(rates=(0.0, 0.0, 0.0), dense_rate=0.0)
    _load(net, variables)
    net.train()
    with torch.no_grad():
        ref = net(torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    bns = [m for m in net if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
    for i, bn in enumerate(bns):
        np.testing.assert_allclose(updated[f"BatchNorm_{i}"]["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(updated[f"BatchNorm_{i}"]["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_channel_dropout_drops_whole_channels_and_registry_builds_it():
    model = DTN()
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    # With the first layer's rate at 1 the first convolution's channels are all dropped: the
    # rest of the network then sees a constant and every example gives the same features.
    dead = DTN(channel_dropout=(1.0, 0.0, 0.0), dense_dropout=0.0)
    out, _ = dead.apply(variables, jax.random.normal(jax.random.key(1), (2, 32, 32, 3)), train=True,
                        rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    clf = make_model("dtn", 10, 256, "batch")
    logits, feats = clf.apply(clf.init(jax.random.key(0), x), x)
    assert logits.shape == (2, 10) and feats.shape == (2, 256)
    with pytest.raises(ValueError, match="one rate per convolution"):
        DTN(channel_dropout=(0.1,)).init(jax.random.key(0), x)
