"""SHOT's digits network (tim-learn/SHOT digit/network.py) against torch on the same weights.

``lenet_shot`` + ``Bottleneck(norm="batch", relu=False, dropout=0.5)`` + ``WeightNormDense`` must
give the outputs of LeNetBase -> feat_bottleneck(type="bn") -> feat_classifier(type="wn"), rebuilt
here in torch from SHOT's layer list, in eval mode; the weight-normalised head's gradients must
be those of ``torch.nn.utils.weight_norm``; the protocol's config must build and run by name.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.bench.protocols import SHOT_EPOCH_STEPS, shot_digits
from da_framework.data.augment_spec import parse_augment
from da_framework.models.registry import ModelError, make_model
from da_framework.models.weight_norm import WeightNormDense

torch = pytest.importorskip("torch")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHOT_KW = {"head_weight_norm": True, "bottleneck_relu": False, "bottleneck_dropout": 0.5}


def _shot_model():
    return make_model("lenet_shot", 10, 256, "batch", input_mean=0.5, input_std=0.5, **SHOT_KW)


def _torch_shot(variables):
    """SHOT's three modules in torch, loaded with the Flax variables."""
    nn, wn = torch.nn, torch.nn.utils.weight_norm
    p, s = variables["params"], variables["batch_stats"]["bottleneck"]["BatchNorm_0"]
    base = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(20, 50, 5), nn.Dropout2d(0.5),
                         nn.MaxPool2d(2), nn.ReLU())
    linear, bn, head = nn.Linear(800, 256), nn.BatchNorm1d(256), wn(nn.Linear(256, 10), name="weight")
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    with torch.no_grad():
        for i, name in ((0, "Conv_0"), (3, "Conv_1")):
            base[i].weight.copy_(t(p["backbone"][name]["kernel"]).permute(3, 2, 0, 1))
            base[i].bias.copy_(t(p["backbone"][name]["bias"]))
        # Flax flattens (H, W, C), torch (C, H, W): permute the bottleneck's input rows.
        k = t(p["bottleneck"]["Dense_0"]["kernel"]).reshape(4, 4, 50, 256).permute(2, 0, 1, 3).reshape(800, 256)
        linear.weight.copy_(k.T)
        linear.bias.copy_(t(p["bottleneck"]["Dense_0"]["bias"]))
        bn.weight.copy_(t(p["bottleneck"]["BatchNorm_0"]["scale"]))
        bn.bias.copy_(t(p["bottleneck"]["BatchNorm_0"]["bias"]))
        bn.running_mean.copy_(t(s["mean"]))
        bn.running_var.copy_(t(s["var"]))
        head.weight_v.copy_(t(p["head"]["kernel"]).T)
        head.weight_g.copy_(t(p["head"]["scale"])[:, None])
        head.bias.copy_(t(p["head"]["bias"]))
    return base.double(), linear.double(), bn.double(), head.double()


def test_eval_forward_equals_shots_torch_network():
    model = _shot_model()
    x = np.asarray(jax.random.uniform(jax.random.key(0), (5, 28, 28, 1)))
    variables = model.init(jax.random.key(1), jnp.asarray(x))
    # non-trivial BN statistics and weight lengths, so each tensor is exercised
    rng = np.random.default_rng(0)
    stats = variables["batch_stats"]["bottleneck"]["BatchNorm_0"]
    variables = {"params": {**variables["params"], "head": {**variables["params"]["head"],
                                                          "scale": jnp.asarray(rng.uniform(0.5, 2.0, 10), jnp.float32)}},
                 "batch_stats": {"bottleneck": {"BatchNorm_0": {"mean": stats["mean"] + 0.3,
                                                                "var": jnp.asarray(rng.uniform(0.5, 2, 256), jnp.float32)}}}}
    logits, feats = model.apply(variables, jnp.asarray(x))
    base, linear, bn, head = _torch_shot(variables)
    for m in (base, linear, bn, head):
        m.eval()
    with torch.no_grad():
        xt = (torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2) - 0.5) / 0.5
        f_ref = bn(linear(base(xt).reshape(5, -1)))
        l_ref = head(f_ref)
    np.testing.assert_allclose(feats, f_ref.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, l_ref.numpy(), rtol=1e-4, atol=1e-4)
    assert float(jnp.min(feats)) < 0  # no ReLU after the BatchNorm


def test_weight_norm_starts_as_the_plain_layer_and_has_torchs_gradients():
    x = jax.random.normal(jax.random.key(2), (6, 7), jnp.float32)
    layer = WeightNormDense(3)
    params = layer.init(jax.random.key(3), x)["params"]
    v = np.asarray(params["kernel"], np.float64)
    np.testing.assert_allclose(params["scale"], np.linalg.norm(v, axis=0), rtol=1e-6)  # g = ||v|| at init
    np.testing.assert_allclose(layer.apply({"params": params}, x), np.asarray(x) @ v, rtol=1e-5, atol=1e-6)
    g = np.array([0.5, 1.5, 3.0])
    params = {**params, "scale": jnp.asarray(g, jnp.float32)}

    def loss(p):
        return jnp.sum(jnp.sin(layer.apply({"params": p}, x)))

    grads = jax.grad(loss)(params)
    ref = torch.nn.utils.weight_norm(torch.nn.Linear(7, 3).double(), name="weight")
    with torch.no_grad():
        ref.weight_v.copy_(torch.tensor(v.T))
        ref.weight_g.copy_(torch.tensor(g[:, None]))
        ref.bias.copy_(torch.tensor(np.asarray(params["bias"], np.float64)))
    torch.sin(ref(torch.tensor(np.asarray(x, np.float64)))).sum().backward()
    np.testing.assert_allclose(grads["kernel"], ref.weight_v.grad.numpy().T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["scale"], ref.weight_g.grad.numpy()[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["bias"], ref.bias.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_train_mode_drops_after_the_batch_norm_and_updates_its_statistics():
    model = _shot_model()
    x = jax.random.uniform(jax.random.key(4), (8, 28, 28, 1))
    variables = model.init(jax.random.key(5), x)
    (_, feats), new = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(6)},
                                  mutable=["batch_stats"])
    frac_zero = float(jnp.mean(feats == 0))
    assert 0.35 < frac_zero < 0.65  # Dropout(0.5) on signed features; a ReLU would add zeros, eval has none
    assert not np.allclose(new["batch_stats"]["bottleneck"]["BatchNorm_0"]["mean"], 0.0)


def test_bad_classifier_kwargs_are_one_line_errors():
    with pytest.raises(ModelError, match="bottleneck_dropout"):
        make_model("lenet_shot", 10, 256, bottleneck_dropout=1.5)
    with pytest.raises(ModelError, match="head_weight_norm must be True or False"):
        make_model("lenet_shot", 10, 256, head_weight_norm="yes")
    with pytest.raises(ModelError, match="drop head_hidden or head_weight_norm"):
        make_model("lenet_shot", 10, 256, head_weight_norm=True, head_hidden=(64,))


def test_protocol_lengths_are_thirty_epochs_of_each_phase():
    full, short = shot_digits("mnist", "usps"), shot_digits("usps", "mnist", short=True)
    assert SHOT_EPOCH_STEPS == {"mnist": -(-54000 // 64), "usps": -(-6562 // 64)}
    assert full["steps"] == 30 * 844 + 30 * 103 and "pretrain_steps=25320" in full["method"]
    assert shot_digits("usps", "mnist")["method"].endswith("shot(pretrain_steps=3090, phase_schedule=True)")
    assert short["steps"] == 5000 and "pretrain_steps=2500" in short["method"]
    assert full["lr_schedule"] == short["lr_schedule"] == "constant"  # SHOT's schedule is the trainer's
    # SHOT augments only the USPS source (u2m: RandomCrop(28, padding=4) + RandomRotation(10))
    assert "source_augment" not in full and parse_augment(short["source_augment"]) == [
        ("random_crop", (), {"pad": 4, "mode": "constant"}),
        ("random_rotation", (), {"max_degrees": 10, "order": 0, "mode": "constant"})]


@pytest.mark.parametrize("name", ["mnist_usps_shot", "usps_mnist_shot", "mnist_usps_shot_short", "usps_mnist_shot_short"])
def test_shot_experiments_load_as_the_protocol(name):
    from da_framework.experiment_files import load_experiment

    c = load_experiment(name)
    source, target = name.split("_")[:2]
    expected = shot_digits(source, target, short=name.endswith("short"))
    assert (c.source, c.target, c.model, c.method, c.steps) == (
        source, target, "lenet_shot", expected["method"], expected["steps"])
    assert dict(c.model_kwargs) == expected["model_kwargs"] and c.bottleneck_norm == "batch"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mnist" / "mnist.npz").is_file(), reason="no ../shared/data here")
def test_shot_protocol_runs_both_phases_on_real_digits(tmp_path):
    from da_framework.experiment_files import load_experiment
    from da_framework.train.loop import train

    config = load_experiment("mnist_usps_shot_short").replace(
        method="cross_entropy(label_smoothing=0.1) + shot(pretrain_steps=3, phase_schedule=True)", steps=6, eval_every=0,
        data_dir=str(SHARED), log_every=1)
    result = train(config)
    phases = [h["loss/shot/phase"] for h in result.history if "loss/shot/phase" in h]
    assert phases == [1, 1, 1, 2, 2, 2]
