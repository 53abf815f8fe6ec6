"""``benchmarks/domainbed_torch_reference.py`` computes what da_framework computes: same network, same IRM / VREx loss.

The PyTorch reference is the anchor of the ColoredMNIST IRM / ERM numbers in
docs/domain_generalisation.md; these checks make sure it is the same workload: our
``mnist_cnn`` weights copied into its ``MNISTCNN`` give the same logits, and DomainBed's IRM
loss (its ``step_loss``) has the same gradient as ours (``cross_entropy`` + ``irm_penalty``).
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.losses.classification import cross_entropy
from da_framework.losses.irm import irm_penalty
from da_framework.models.registry import make_model

torch = pytest.importorskip("torch")

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "domainbed_torch_reference.py"


def _reference():
    spec = importlib.util.spec_from_file_location("domainbed_torch_reference", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_weights(params, net) -> None:
    """Flax HWIO kernels / (in, out) dense into torch OIHW / (out, in)."""
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, torch.nn.GroupNorm)]
    with torch.no_grad():
        for i, (conv, gn) in enumerate(zip(convs, norms)):
            p = params["backbone"]
            conv.weight.copy_(torch.from_numpy(np.asarray(p[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(np.array(p[f"Conv_{i}"]["bias"])))
            gn.weight.copy_(torch.from_numpy(np.array(p[f"GroupNorm_{i}"]["scale"])))
            gn.bias.copy_(torch.from_numpy(np.array(p[f"GroupNorm_{i}"]["bias"])))
        net.classifier.weight.copy_(torch.from_numpy(np.asarray(params["head"]["kernel"]).T.copy()))
        net.classifier.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))


@pytest.mark.parametrize("algorithm", ["IRM", "VREx"])
def test_reference_network_and_loss_match_ours(algorithm):
    # Both sides in float64: in float32 the two frameworks' summation orders differ by up to
    # 2% in a few small gradient entries (seen on one CPU), which says nothing about the losses.
    ref = _reference()
    rng = np.random.default_rng(0)
    n = 8  # per environment, two environments
    x = rng.random((2 * n, 28, 28, 2))
    y = rng.integers(0, 2, 2 * n).astype(np.int32)
    model = make_model("mnist_cnn", 2)
    params = model.init(jax.random.key(1), jnp.asarray(x, jnp.float32))["params"]
    net = ref.MNISTCNN()
    _copy_weights(params, net)
    net = net.double()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y.astype(np.int64))
    logits_t = net(xt)
    weight = 100.0 if algorithm == "IRM" else 10.0
    loss_t, _ = ref.step_loss(algorithm, list(torch.split(logits_t, n)), list(torch.split(yt, n)), weight)
    loss_t.backward()

    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64 = jnp.asarray(x, jnp.float64)
        logits_j, _ = jax.jit(model.apply)({"params": p64}, x64)
        np.testing.assert_allclose(logits_t.detach().numpy(), np.asarray(logits_j), rtol=1e-9, atol=1e-9)

        def ours(p):
            z, _ = model.apply({"params": p}, x64)
            envs = [(z[:n], jnp.asarray(y[:n])), (z[n:], jnp.asarray(y[n:]))]
            if algorithm == "IRM":
                penalty = jnp.mean(jnp.stack([irm_penalty(zz, yy) for zz, yy in envs]))
            else:
                risks = jnp.stack([cross_entropy(zz, yy) for zz, yy in envs])
                penalty = jnp.mean((risks - risks.mean()) ** 2)
            return cross_entropy(z, jnp.asarray(y)) + weight * penalty

        loss_j, grads = jax.jit(jax.value_and_grad(ours))(p64)
        grads = jax.tree.map(np.asarray, grads)
    np.testing.assert_allclose(loss_t.item(), float(loss_j), rtol=1e-6)  # our losses reduce in float32
    g_t = net.features[0].weight.grad.numpy().transpose(2, 3, 1, 0)
    g_j = grads["backbone"]["Conv_0"]["kernel"]
    assert np.abs(g_j).max() > 0
    np.testing.assert_allclose(g_t, g_j, rtol=1e-4, atol=1e-6 * np.abs(g_j).max())
    np.testing.assert_allclose(net.classifier.weight.grad.numpy().T, grads["head"]["kernel"],
                               rtol=1e-4, atol=1e-6 * np.abs(grads["head"]["kernel"]).max())


def test_reference_mixup_objective_and_gradients_match_ours():
    from da_framework.losses.mixup_envs import mixup_objective

    ref = _reference()
    rng = np.random.default_rng(3)
    n, k = 6, 3  # per environment, three environments
    x = rng.random((k, n, 28, 28, 2))
    y = rng.integers(0, 2, (k, n)).astype(np.int32)
    perm, lams = [2, 0, 1], [0.9, 0.05, 0.5]
    model = make_model("mnist_cnn", 2)
    params = model.init(jax.random.key(4), jnp.asarray(x[0], jnp.float32))["params"]
    net = ref.MNISTCNN()
    _copy_weights(params, net)
    net = net.double()
    xt = [torch.from_numpy(x[e].transpose(0, 3, 1, 2).copy()) for e in range(k)]
    yt = [torch.from_numpy(y[e].astype(np.int64)) for e in range(k)]
    loss_t = ref.mixup_loss(net, xt, yt, perm, lams)
    loss_t.backward()
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

        def ours(p):
            return mixup_objective(lambda v: model.apply({"params": p}, v)[0], jnp.asarray(x), jnp.asarray(y),
                                   jnp.asarray(perm), jnp.asarray(lams, jnp.float64))

        loss_j, grads = jax.jit(jax.value_and_grad(ours))(p64)
    np.testing.assert_allclose(loss_t.item(), float(loss_j), rtol=1e-6)
    g_j = np.asarray(grads["head"]["kernel"])
    assert np.abs(g_j).max() > 0
    np.testing.assert_allclose(net.classifier.weight.grad.numpy().T, g_j, rtol=1e-4, atol=1e-6 * np.abs(g_j).max())
    g_t = net.features[0].weight.grad.numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(g_t, np.asarray(grads["backbone"]["Conv_0"]["kernel"]), rtol=1e-4,
                               atol=1e-6 * np.abs(g_t).max())
    # a different pairing is a different objective (the draws matter, so the test can fail)
    with jax.enable_x64(True):
        other = jax.jit(lambda p: mixup_objective(lambda v: model.apply({"params": p}, v)[0], jnp.asarray(x),
                                                  jnp.asarray(y), jnp.asarray([0, 1, 2]), jnp.asarray(lams, jnp.float64)))(p64)
    assert abs(float(other) - loss_t.item()) > 1e-4


def test_reference_mmd_objective_and_gradients_match_ours():
    from da_framework.losses.mmd_envs import mmd_envs_term
    from da_framework.losses.registry import DomainView, LossInputs

    ref = _reference()
    rng = np.random.default_rng(5)
    n, k = 6, 3  # per environment, three environments (three pairs)
    x = rng.random((k * n, 28, 28, 2))
    y = rng.integers(0, 2, k * n).astype(np.int32)
    model = make_model("mnist_cnn", 2)
    params = model.init(jax.random.key(6), jnp.asarray(x, jnp.float32))["params"]
    net = ref.MNISTCNN()
    _copy_weights(params, net)
    net = net.double()
    feats_t = net.featurize(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    yt = torch.from_numpy(y.astype(np.int64))
    loss_t, parts = ref.step_loss("MMD", list(torch.split(net.classifier(feats_t), n)), list(torch.split(yt, n)),
                                  2.0, list(torch.split(feats_t, n)))
    loss_t.backward()
    assert parts["penalty"] > 1e-3  # the penalty is not vanishingly small, so a wrong kernel shows

    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y)

        def ours(p):
            z, f = model.apply({"params": p}, x64)
            views = tuple(DomainView(e, True, f[e * n:(e + 1) * n], z[e * n:(e + 1) * n], y64[e * n:(e + 1) * n])
                          for e in range(k))
            inputs = LossInputs(source_features=f, target_features=f[:2], source_logits=z, target_logits=z[:2],
                                source_labels=y64, progress=jnp.float64(0.0), key=jax.random.key(0), domains=views)
            return cross_entropy(z, y64) + mmd_envs_term(inputs, mmd_gamma=2.0)

        loss_j, grads = jax.jit(jax.value_and_grad(ours))(p64)
    np.testing.assert_allclose(loss_t.item(), float(loss_j), rtol=1e-6)
    g_t = net.features[0].weight.grad.numpy().transpose(2, 3, 1, 0)
    g_j = np.asarray(grads["backbone"]["Conv_0"]["kernel"])
    assert np.abs(g_j).max() > 0
    np.testing.assert_allclose(g_t, g_j, rtol=1e-4, atol=1e-6 * np.abs(g_j).max())
    # the penalty's own gradient reaches the featurizer: without it the first conv's gradient differs
    net.zero_grad()
    ref.step_loss("ERM", list(torch.split(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), n)),
                  list(torch.split(yt, n)), 0.0)[0].backward()
    assert np.abs(net.features[0].weight.grad.numpy().transpose(2, 3, 1, 0) - g_j).max() > 1e-3 * np.abs(g_j).max()
