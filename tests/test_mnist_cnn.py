"""DomainBed's MNIST_CNN featurizer: parameter count and a NumPy float64 forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from da_framework.models.registry import make_model


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """PyTorch Conv2d(3x3, padding=1, stride) on one (H, W, C) image, HWIO weights."""
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    h = (x.shape[0] + 2 - 3) // stride + 1
    out = np.zeros((h, h, w.shape[-1]))
    for di in range(3):
        for dj in range(3):
            patch = xp[di : di + stride * (h - 1) + 1 : stride, dj : dj + stride * (h - 1) + 1 : stride]
            out += patch @ w[di, dj]
    return out + b


def _group_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int = 8) -> np.ndarray:
    h, w, c = x.shape
    g = x.reshape(h, w, groups, c // groups)
    mean, var = g.mean(axis=(0, 1, 3), keepdims=True), g.var(axis=(0, 1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + 1e-5)).reshape(h, w, c) * scale + bias


def test_mnist_cnn_matches_domainbeds_layers():
    """Conv(64) -> ReLU -> GN, Conv(128, stride 2) -> ReLU -> GN, 2 x [Conv(128) -> ReLU -> GN], mean-pool:
    370,560 backbone parameters for 1 input channel (640 + 73,856 + 2 x 147,584 + GN 896)."""
    model = make_model("mnist_cnn", 10)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), jnp.asarray(x))
    p = variables["params"]["backbone"]
    assert sum(a.size for a in jax.tree.leaves(p)) == 370_560
    _, feats = model.apply(variables, jnp.asarray(x))
    assert feats.shape == (2, 128)
    ref = []
    for im in x.astype(np.float64):
        h = im
        for i, s in enumerate((1, 2, 1, 1)):
            conv, gn = p[f"Conv_{i}"], p[f"GroupNorm_{i}"]
            h = _conv(h, np.asarray(conv["kernel"], np.float64), np.asarray(conv["bias"], np.float64), s)
            h = _group_norm(np.maximum(h, 0.0), np.asarray(gn["scale"], np.float64), np.asarray(gn["bias"], np.float64))
        assert h.shape[:2] == (14, 14)
        ref.append(h.mean(axis=(0, 1)))
    np.testing.assert_allclose(np.asarray(feats), np.stack(ref), rtol=2e-4, atol=2e-5)
