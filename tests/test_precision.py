"""Mixed precision: bfloat16 compute, float32 master weights, float32 losses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ConfigError, ExperimentConfig
from da_framework.models import make_model
from da_framework.models.classifier import Classifier
from da_framework.train import init_train_state, make_optimizer, make_train_step, parse_method, train
from da_framework.train.precision import PrecisionError, cast_floating, cast_like, get_compute_dtype



def capture_grads() -> optax.GradientTransformation:
    """An 'optimiser' that leaves parameters alone and stores the gradients as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def _batches(batch: int, side: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.random((batch, side, side, 1)), jnp.float32)
    xt = jnp.asarray(0.5 * rng.random((batch, side, side, 1)) + 0.3, jnp.float32)
    ys = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    return {"image": xs, "label": ys}, {"image": xt}


def _steps(model, spec, tx):
    method = parse_method(spec)
    sb, tb = _batches(16)
    state = init_train_state(jax.random.key(0), model, method, tx, sb["image"], tb["image"], sb["label"])
    f32 = jax.jit(make_train_step(model, method, tx, 10))
    bf16 = jax.jit(make_train_step(model, method, tx, 10, compute_dtype="bfloat16"))
    return state, f32, bf16, sb, tb


def _cosine(a, b):
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)]).astype(np.float64)
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)]).astype(np.float64)
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def test_bfloat16_step_keeps_float32_master_weights_and_is_close_to_float32():
    model = make_model("lenet", 10, 16, channels=(4, 8), dense=32)
    state, f32, bf16, sb, tb = _steps(model, "cross_entropy + 1.0*mmd + 1.0*dann", capture_grads())
    key = jax.random.key(1)
    s32, m32 = f32(state, sb, tb, key)
    s16, m16 = bf16(state, sb, tb, key)
    for leaf in jax.tree.leaves((s16.params, s16.opt_state)):
        assert leaf.dtype == jnp.float32
    for k in ("loss", "loss/cross_entropy", "loss/mmd", "loss/dann"):
        assert m16[k].dtype == jnp.float32 and np.isfinite(float(m16[k])), k
        np.testing.assert_allclose(float(m16[k]), float(m32[k]), rtol=3e-2, atol=2e-3, err_msg=k)
    # gradients (stored as the 'optimiser' state) point the same way; bfloat16 has 8 bits
    # of mantissa, so they are close but not equal
    assert _cosine(s16.opt_state, s32.opt_state) > 0.99
    assert not np.allclose(float(m16["loss/mmd"]), float(m32["loss/mmd"]), rtol=1e-7, atol=0)


def test_forward_really_runs_in_bfloat16():
    model = make_model("lenet", 10, 16, channels=(4, 8), dense=32)
    state, _, _, sb, tb = _steps(model, "source_only", capture_grads())
    args = (state, sb, tb, jax.random.key(0))
    low = str(jax.make_jaxpr(make_train_step(model, parse_method("source_only"), capture_grads(), 10,
                                             compute_dtype="bfloat16"))(*args))
    high = str(jax.make_jaxpr(make_train_step(model, parse_method("source_only"), capture_grads(), 10))(*args))
    assert "conv_general_dilated" in low and "bf16[32,16,16,4]" in low
    assert "bf16" not in high


class TinyBatchNormNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> global mean: the smallest backbone with batch statistics."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return jnp.mean(nn.relu(x), axis=(1, 2))


def _bn_running_stats_reference(params, model_state, x):
    """TinyBatchNormNet's running (mean, var) after one training forward on ``x``, in float64.

    The 3x3 stride-2 'SAME' conv on 16x16 pads one row/column at the bottom/right; the
    running statistics follow Flax's rule ``0.9 * old + 0.1 * batch`` (biased variance).
    """
    p = params["model"]["backbone"]["Conv_0"]
    k, b = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 1), (0, 1), (0, 0)))
    h = sum(xp[:, i : i + 16 : 2, j : j + 16 : 2, :] @ k[i, j] for i in range(3) for j in range(3)) + b
    s = model_state["batch_stats"]["backbone"]["BatchNorm_0"]
    return (0.9 * np.asarray(s["mean"], np.float64) + 0.1 * h.mean((0, 1, 2)),
            0.9 * np.asarray(s["var"], np.float64) + 0.1 * h.var((0, 1, 2)))


@pytest.mark.parametrize(
    "model",
    [
        Classifier(backbone=TinyBatchNormNet(), num_classes=10, bottleneck_dim=16),
        pytest.param(make_model("resnet8", 10, None, width=4), marks=pytest.mark.slow),
    ],
    ids=["tiny_bn", "resnet8"],
)
def test_batchnorm_statistics_stay_float32_and_step_compiles_once(model):
    tx = make_optimizer(ExperimentConfig())
    state, _, bf16, sb, tb = _steps(model, "dan", tx)
    tiny = isinstance(model.backbone, TinyBatchNormNet)
    x = np.concatenate([sb["image"], tb["image"]])  # BatchNorm sees source and target together
    for i in range(2):
        ref = _bn_running_stats_reference(state.params, state.model_state, x) if tiny else None
        state, m = bf16(state, sb, tb, jax.random.key(i))
        assert np.isfinite(float(m["loss"]))
        if tiny:  # the bfloat16 forward's batch statistics agree with a float64 NumPy conv
            got = state.model_state["batch_stats"]["backbone"]["BatchNorm_0"]
            np.testing.assert_allclose(np.asarray(got["mean"]), ref[0], atol=1e-3)
            np.testing.assert_allclose(np.asarray(got["var"]), ref[1], atol=2e-4)
    assert bf16._cache_size() == 1
    assert "batch_stats" in state.model_state
    for leaf in jax.tree.leaves((state.params, state.model_state, state.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32)


def test_train_runs_in_bfloat16_through_the_config():
    tiny = dict(model="lenet", model_kwargs={"channels": (4, 8), "dense": 32}, bottleneck_dim=16, batch_size=16)
    r = train(ExperimentConfig(method="dann", steps=6, log_every=3, compute_dtype="bfloat16", **tiny))
    assert r.compile_count == 1 and np.isfinite(r.history[-2]["loss"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(r.state.params))
    with pytest.raises(ConfigError, match="compute_dtype.*valid: float32, bfloat16"):
        ExperimentConfig(compute_dtype="float16")


def test_casts():
    tree = {"w": jnp.ones(3), "n": jnp.arange(3), "h": jnp.ones(2, jnp.bfloat16)}
    low = cast_floating(tree, jnp.bfloat16)
    assert low["w"].dtype == jnp.bfloat16 and low["n"].dtype == tree["n"].dtype
    back = cast_like(low, tree)
    assert jax.tree.map(lambda x: x.dtype, back) == jax.tree.map(lambda x: x.dtype, tree)
    assert get_compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(PrecisionError, match="valid: float32, bfloat16"):
        get_compute_dtype("fp8")
