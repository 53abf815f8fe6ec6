"""Pruning, int8 quantisation, QAT's straight-through estimator, storage sizes and distillation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from da_framework.models.registry import make_model
from da_framework.transfer import TransferError, flatten
from da_framework.transfer.finetune import accuracy
from da_framework.transfer.pruning import (
    apply_masks,
    gradual_pruning,
    keep_masks,
    magnitude_masks,
    polynomial_sparsity,
    prune,
    sparsity,
)
from da_framework.transfer.quantization import dequantize_params, fake_quant, fake_quantize_params, quantize, quantize_params
from da_framework.transfer.size import storage_bytes
from da_framework.transfer.student import distill


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a": {"kernel": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32), "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)},
        "b": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)) * 0.1, jnp.float32)},
    }


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_global_sparsity_exact_and_smallest(s):
    params = _params()
    pruned, masks = prune(params, s, scope="global")
    n = 35 + 72
    assert sparsity(pruned) == round(s * n) / n
    np.testing.assert_array_equal(pruned["a"]["bias"], params["a"]["bias"])  # biases never pruned
    # reference: the round(s n) smallest |w| over both kernels (float64 NumPy)
    mags = np.concatenate([np.abs(np.asarray(params["a"]["kernel"], np.float64)).ravel(), np.abs(np.asarray(params["b"]["kernel"], np.float64)).ravel()])
    ref_keep = np.ones(n, bool)
    ref_keep[np.argsort(mags, kind="stable")[: round(s * n)]] = False
    got = np.concatenate([np.asarray(masks["a"]["kernel"]).ravel(), np.asarray(masks["b"]["kernel"]).ravel()])
    np.testing.assert_array_equal(got, ref_keep)


@pytest.mark.parametrize("s", [0.25, 0.6])
def test_layer_sparsity_exact_per_leaf(s):
    pruned, _ = prune(_params(), s, scope="layer")
    for path in ("a/kernel", "b/kernel"):
        leaf = np.asarray(flatten(pruned)[path])
        assert np.sum(leaf == 0) == round(s * leaf.size)


def test_bad_sparsity_and_scope():
    with pytest.raises(TransferError, match="sparsity"):
        magnitude_masks(_params(), 1.5)
    with pytest.raises(TransferError, match="scope"):
        magnitude_masks(_params(), 0.5, scope="row")


def _loss(p):
    x = jnp.ones((4, 7))
    h = x @ p["a"]["kernel"] + p["a"]["bias"]
    return jnp.sum(jnp.tanh(h) ** 2) + jnp.sum(jnp.sin(p["b"]["kernel"]))


def test_masks_persist_through_finetuning():
    params, masks = prune(_params(), 0.7)
    tx = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9), keep_masks(masks))
    state = tx.init(params)
    p = params
    for _ in range(5):
        updates, state = tx.update(jax.grad(_loss)(p), state, p)
        p = optax.apply_updates(p, updates)
    for path, m in flatten(masks).items():
        leaf = np.asarray(flatten(p)[path])
        assert np.all(leaf[~np.asarray(m)] == 0), path
    assert sparsity(p) == sparsity(params)
    assert not np.array_equal(np.asarray(p["a"]["kernel"]), np.asarray(params["a"]["kernel"]))  # kept weights train


def test_polynomial_schedule_matches_formula():
    sched = polynomial_sparsity(0.8, begin_step=10, end_step=50, frequency=10, initial_sparsity=0.1)
    for t, expect in [(0, 0.1), (10, 0.1), (15, 0.1), (20, 0.8 - 0.7 * 0.75**3), (35, 0.8 - 0.7 * 0.5**3), (40, 0.8 - 0.7 * 0.25**3), (50, 0.8), (99, 0.8)]:
        np.testing.assert_allclose(float(sched(t)), expect, rtol=1e-6)


def test_gradual_pruning_reaches_target_and_keeps_masks():
    params = _params()
    sched = polynomial_sparsity(0.75, begin_step=0, end_step=6, frequency=2)
    tx = optax.chain(optax.sgd(0.05, momentum=0.9), gradual_pruning(sched, 0, 6, 2))
    state, p, seen = tx.init(params), params, []
    for _ in range(10):
        updates, state = tx.update(jax.grad(_loss)(p), state, p)
        p = optax.apply_updates(p, updates)
        seen.append(sparsity(p))
    n = 107
    expect = [round(float(sched(t)) * n) / n for t in range(10)]
    expect = [expect[2 * (t // 2)] if t <= 6 else expect[6] for t in range(10)]
    np.testing.assert_allclose(seen, expect)
    assert seen[-1] == round(0.75 * n) / n and seen == sorted(seen)


def test_int8_round_trip_error_bound():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5, 3, 8)) * np.linspace(0.01, 2, 8), jnp.float32)
    q = quantize(w)
    assert q.values.dtype == jnp.int8 and q.scale.shape == (1, 1, 1, 8)
    codes = np.asarray(q.values)
    assert codes.min() >= -127 and codes.max() <= 127
    np.testing.assert_array_equal(np.abs(codes).max(axis=(0, 1, 2)), 127)  # each channel's max hits q_max
    ref_scale = np.abs(np.asarray(w, np.float64)).max(axis=(0, 1, 2)) / 127
    np.testing.assert_allclose(np.asarray(q.scale).ravel(), ref_scale, rtol=1e-6)
    err = np.abs(np.asarray(q.dequantize(), np.float64) - np.asarray(w, np.float64))
    assert np.all(err <= ref_scale / 2 * (1 + 1e-5) + 1e-9)
    assert q.nbytes == w.size + 4 * 8
    qp = quantize_params({"k": {"kernel": w, "bias": jnp.ones(8)}})
    dp = dequantize_params(qp)
    np.testing.assert_array_equal(dp["k"]["bias"], jnp.ones(8))
    np.testing.assert_array_equal(dp["k"]["kernel"], q.dequantize())


def test_ste_gradient_identity_inside_clip_range():
    w = jnp.linspace(-2.0, 2.0, 41)
    scale = jnp.asarray(1.0 / 127)  # clip range [-1, 1]
    c = jnp.arange(41.0)
    g = jax.grad(lambda v: jnp.sum(fake_quant(v, scale, 8) * c))(w)
    inside = np.abs(np.asarray(w)) <= 1.0
    np.testing.assert_array_equal(np.asarray(g)[inside], np.asarray(c)[inside])
    np.testing.assert_array_equal(np.asarray(g)[~inside], 0.0)
    # forward is the quantise-dequantise value
    np.testing.assert_allclose(fake_quant(w, scale, 8), np.clip(np.round(np.asarray(w) * 127), -127, 127) / 127, rtol=1e-6)
    # per-channel QAT transform: gradient is exactly the identity (every weight is inside)
    params = {"d": {"kernel": jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)), jnp.float32)}}
    g2 = jax.grad(lambda p: jnp.sum(fake_quantize_params(p, bits=4)["d"]["kernel"] * 3.0))(params)
    np.testing.assert_array_equal(g2["d"]["kernel"], 3.0)


def test_storage_bytes_hand_worked():
    params = {"l": {"kernel": jnp.asarray([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]]), "bias": jnp.zeros(3)}}
    assert storage_bytes(params) == 6 * 4 + 3 * 4
    assert storage_bytes(params, sparse=True) == 3 * 4 + 1 + 12  # 3 non-zeros, 6-bit map -> 1 byte, bias dense
    assert storage_bytes(params, bits=8) == 6 + 3 * 4 + 12
    assert storage_bytes(params, bits=4, sparse=True) == 2 + 1 + 12 + 12


def test_distillation_moves_student_towards_teacher():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    teacher = make_model("mlp", 3, None, hidden=(64, 64))
    student = make_model("mlp", 3, None, hidden=(8,))
    tv = teacher.init(jax.random.key(0), x[:2])
    sv = student.init(jax.random.key(1), x[:2])
    y_teacher = np.asarray(jnp.argmax(teacher.apply(tv, x)[0], -1))
    before = accuracy(student, sv, x, y_teacher)
    out = distill(teacher, tv, student, sv, optax.adam(1e-2), x, steps=150, key=jax.random.key(2), temperature=2.0)
    assert accuracy(student, out, x, y_teacher) > max(before, 0.8)
    with pytest.raises(TransferError, match="needs labels"):
        distill(teacher, tv, student, sv, optax.adam(1e-2), x, 1, jax.random.key(0), alpha=0.5)


def test_apply_masks_keeps_dtype():
    p = {"w": {"kernel": jnp.ones((2, 2), jnp.bfloat16)}}
    out = apply_masks(p, {"w": {"kernel": jnp.array([[True, False], [False, True]])}})
    assert out["w"]["kernel"].dtype == jnp.bfloat16 and float(out["w"]["kernel"].sum()) == 2


@settings(max_examples=10, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    s=st.floats(0.0, 1.0),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 2**16),
)
def test_sparsity_exact_property(sizes, s, scope, seed):
    rng = np.random.default_rng(seed)
    params = {f"l{i}": {"kernel": jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)} for i, n in enumerate(sizes)}
    pruned, masks = prune(params, s, scope=scope)
    leaves = [np.asarray(pruned[f"l{i}"]["kernel"]) for i in range(len(sizes))]
    if scope == "global":
        assert sum(int(np.sum(x == 0)) for x in leaves) == round(s * sum(2 * n for n in sizes))
    else:
        assert [int(np.sum(x == 0)) for x in leaves] == [round(s * 2 * n) for n in sizes]
    kept = np.concatenate([np.abs(x[x != 0]) for x in leaves]) if scope == "global" else None
    if kept is not None and kept.size and kept.size < sum(2 * n for n in sizes):  # every kept |w| >= every pruned |w|
        pruned_mags = np.concatenate([np.abs(np.asarray(params[f"l{i}"]["kernel"]))[~np.asarray(masks[f"l{i}"]["kernel"])] for i in range(len(sizes))])
        assert kept.min() >= pruned_mags.max()


def test_masks_and_quantisation_keep_empty_subtrees():
    params = {"model": _params(), "aux": {}}
    pruned, masks = prune(params, 0.5)
    assert masks["aux"] == {} and pruned["aux"] == {}
    tx = optax.chain(optax.sgd(0.1), keep_masks(masks))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, pruned), tx.init(pruned), pruned)
    assert updates["aux"] == {}
    assert quantize_params(params)["aux"] == {} and fake_quantize_params(params)["aux"] == {}
