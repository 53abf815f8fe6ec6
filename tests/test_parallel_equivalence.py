"""Data parallelism is exact: a step over 4 simulated CPU devices equals the one-device step.

The batch is sharded over a 1-D mesh and the state replicated; since the step is one
``jax.jit`` program with global semantics, losses that need the whole batch (MMD, CORAL,
MCC) and BatchNorm statistics must come out over the *global* batch.  The tests compare the
loss, every gradient leaf and the new BatchNorm statistics against the unsharded step, and
check that a per-device computation (what a naive ``pmap`` port would do) is detectably
different, so the comparison can fail.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from da_framework.losses.confusion import minimum_class_confusion
from da_framework.losses.coral import coral
from da_framework.losses.mmd import mk_mmd
from da_framework.models import make_model
from da_framework.models.classifier import Classifier
from da_framework.train import init_train_state, make_mesh, make_train_step, parse_method, replicate, shard_batch
from da_framework.train.parallel import DATA_AXIS

N_DEV = 4


def capture_grads() -> optax.GradientTransformation:
    """An 'optimiser' that leaves parameters alone and stores the gradients as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def _batches(batch: int, side: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.random((batch, side, side, 1)), jnp.float32)
    # A shifted target domain, so that discrepancy terms are far from zero.
    xt = jnp.asarray(0.5 * rng.random((batch, side, side, 1)) + 0.3, jnp.float32)
    ys = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    return {"image": xs, "label": ys}, {"image": xt}


class TinyBatchNormNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> global mean: the smallest backbone with batch statistics."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return jnp.mean(nn.relu(x), axis=(1, 2))


def _model(name: str):
    if name == "lenet":
        return make_model("lenet", 10, 16, channels=(4, 8), dense=32)
    if name == "tiny_bn":
        return Classifier(backbone=TinyBatchNormNet(), num_classes=10, bottleneck_dim=16)
    return make_model("resnet8", 10, 16, width=4)  # BatchNorm: running statistics in model_state


def _one_and_sharded(model_name: str, spec: str, batch: int = 16):
    model, method, tx = _model(model_name), parse_method(spec), capture_grads()
    sb, tb = _batches(batch)
    state = init_train_state(jax.random.key(0), model, method, tx, sb["image"], tb["image"], sb["label"])
    step = jax.jit(make_train_step(model, method, tx, total_steps=10))
    key = jax.random.key(7)
    one = step(state, sb, tb, key)
    mesh = make_mesh(N_DEV)
    s_sb, s_tb = shard_batch(sb, mesh), shard_batch(tb, mesh)
    assert len(s_sb["image"].sharding.device_set) == N_DEV
    many = step(replicate(state, mesh), s_sb, s_tb, key)
    return one, many


def _assert_trees_close(a, b, rtol, atol, what):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and la, what
    for i, (x, y) in enumerate(zip(la, lb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=rtol, atol=atol, err_msg=f"{what} leaf {i}")


@pytest.mark.parametrize(
    "spec",
    [
        "dann",
        "cross_entropy + 1.0*mmd + 1.0*coral + 0.5*mcc",
        *(pytest.param(s, marks=pytest.mark.slow) for s in ["source_only", "dan", "coral", "mcc"]),
    ],
)
def test_sharded_step_matches_unsharded_loss_and_grads(spec):
    """Source + target batch (two domains, concatenated inside the step) over 4 devices."""
    (one_state, one_m), (many_state, many_m) = _one_and_sharded("lenet", spec)
    for k in one_m:
        np.testing.assert_allclose(many_m[k], one_m[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert float(one_m["grad_norm"]) > 0
    _assert_trees_close(one_state.opt_state, many_state.opt_state, 1e-4, 1e-6, f"grads of {spec}")


@pytest.mark.parametrize(
    "model_name, spec",
    [
        ("tiny_bn", "dan"),
        ("tiny_bn", "source_only"),
        pytest.param("resnet8", "dan", marks=pytest.mark.slow),
    ],
)
def test_batchnorm_statistics_are_global(model_name, spec):
    """Backbones with BatchNorm: gradients and new running statistics match one device."""
    (one_state, one_m), (many_state, many_m) = _one_and_sharded(model_name, spec)
    np.testing.assert_allclose(many_m["loss"], one_m["loss"], rtol=1e-5, atol=1e-6)
    _assert_trees_close(one_state.opt_state, many_state.opt_state, 1e-4, 1e-5, "grads")
    assert "batch_stats" in one_state.model_state
    _assert_trees_close(one_state.model_state, many_state.model_state, 1e-5, 1e-6, "batch_stats")


def _global_and_per_device(loss, *arrays):
    """(loss of the whole sharded batch under jit, mean of per-device losses via shard_map)."""
    mesh = make_mesh(N_DEV)
    sharded = [jax.device_put(a, NamedSharding(mesh, PartitionSpec(DATA_AXIS))) for a in arrays]
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(arrays)))))
    per_device = jax.jit(
        jax.shard_map(
            lambda *xs: jax.lax.pmean(loss(*xs), DATA_AXIS),
            mesh=mesh,
            in_specs=tuple(PartitionSpec(DATA_AXIS) for _ in arrays),
            out_specs=PartitionSpec(),
        )
    )
    return value_and_grad(*arrays), value_and_grad(*sharded), per_device(*sharded)


@pytest.mark.parametrize(
    "name, loss, n_inputs",
    [
        ("mmd", lambda s, t: mk_mmd(s, t), 2),
        ("coral", coral, 2),
        ("mcc", minimum_class_confusion, 1),  # one domain: the target batch alone
    ],
)
def test_whole_batch_losses_see_the_global_batch(name, loss, n_inputs):
    rng = np.random.default_rng(1)
    arrays = [jnp.asarray(rng.normal(size=(32, 6)) + i, jnp.float32) for i in range(n_inputs)]
    (v1, g1), (v4, g4), per_device = _global_and_per_device(loss, *arrays)
    np.testing.assert_allclose(v4, v1, rtol=1e-5, atol=1e-7, err_msg=name)
    _assert_trees_close(g1, g4, 1e-4, 1e-7, name)
    # The comparison has teeth: averaging per-device losses gives a different number.
    assert abs(float(per_device) - float(v1)) > 1e-3 * (abs(float(v1)) + 1e-3), name
