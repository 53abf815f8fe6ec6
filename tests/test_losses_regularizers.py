"""Fine-tuning regularisers (L2-SP, DELTA feature maps, BSS) against NumPy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError, LossInputs, TermState, get_loss
from da_framework.losses.regularizers import batch_spectral_shrinkage, delta_attention, feature_map_distance, l2_sp
from da_framework.train import parse_method, train

TINY = {
    "model": "lenet",
    "model_kwargs": {"channels": (4, 8), "dense": 32},
    "bottleneck_dim": 16,
    "batch_size": 16,
    "log_every": 1,
}


def _params(rng, scale=1.0):
    return {
        "backbone": {
            "w": jnp.asarray(rng.normal(size=(3, 2)) * scale, jnp.float32),
            "b": jnp.asarray(rng.normal(size=2), jnp.float32),
        },
        "head": {
            "kernel": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=4), jnp.float32),
        },
    }


def _np_sq(tree):
    return sum(float((np.asarray(x, np.float64) ** 2).sum()) for x in jax.tree.leaves(tree))


def test_l2_sp_reference_and_gradient():
    rng = np.random.default_rng(0)
    w, w0 = _params(rng), _params(rng)
    diff = jax.tree.map(lambda a, b: np.float64(a) - np.float64(b), w["backbone"], w0["backbone"])
    ref = 0.5 * 0.1 * _np_sq(diff) + 0.5 * 0.01 * _np_sq(w["head"])
    np.testing.assert_allclose(jax.jit(l2_sp)(w, w0, alpha=0.1, beta=0.01), ref, rtol=1e-5)
    np.testing.assert_allclose(l2_sp(w, w, beta=0.0), 0.0, atol=0)
    g = jax.grad(l2_sp)(w, w0, ("head",), 0.1, 0.01)
    np.testing.assert_allclose(g["backbone"]["w"], 0.1 * (w["backbone"]["w"] - w0["backbone"]["w"]), rtol=1e-5)
    np.testing.assert_allclose(g["head"]["kernel"], 0.01 * w["head"]["kernel"], rtol=1e-5)
    # every module anchored when none is new
    np.testing.assert_allclose(
        l2_sp(w, w0, (), 1.0, 5.0), 0.5 * _np_sq(jax.tree.map(lambda a, b: np.float64(a) - b, w, w0)), rtol=1e-5
    )
    with pytest.raises(LossError, match="not in the parameters"):
        l2_sp(w, w0, ("classifier",))
    with pytest.raises(LossError, match="structure differs"):
        l2_sp(w, {"head": w0["head"]})


def np_fm(f, f0, weights=None):
    f, f0 = np.asarray(f, np.float64), np.asarray(f0, np.float64)
    n, c = f.shape[0], f.shape[-1]
    w = np.ones((n, c)) if weights is None else np.broadcast_to(weights, (n, c))
    total = 0.0
    for i in range(n):
        for j in range(c):
            total += w[i, j] * ((f[i, ..., j] - f0[i, ..., j]) ** 2).sum()
    return total / n


def test_feature_map_distance_reference():
    rng = np.random.default_rng(1)
    f, f0 = rng.normal(size=(5, 3, 3, 4)).astype(np.float32), rng.normal(size=(5, 3, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(feature_map_distance)(f, f0), np_fm(f, f0), rtol=1e-5)
    w = rng.random(4).astype(np.float32)
    np.testing.assert_allclose(feature_map_distance(f, f0, w), np_fm(f, f0, w), rtol=1e-5)
    np.testing.assert_allclose(feature_map_distance(f, f), 0.0, atol=0)
    # no gradient flows into the anchor features
    g = jax.grad(feature_map_distance, argnums=1)(f, f0)
    assert float(jnp.abs(g).sum()) == 0.0
    with jax.enable_x64(True):
        check_grads(
            jax.jit(lambda a: feature_map_distance(a, np.float64(f0), np.float64(w))), (np.float64(f),), order=2
        )
    with pytest.raises(LossError, match="same shape"):
        feature_map_distance(f, f0[:, :2])
    with pytest.raises(LossError, match="channel_weights"):
        feature_map_distance(f, f0, np.ones(3))
    with pytest.raises(LossError, match="empty batch"):
        feature_map_distance(f[:0], f0[:0])


def test_delta_attention_reference():
    rng = np.random.default_rng(2)
    f0, kernel, bias = rng.normal(size=(4, 3)), rng.normal(size=(3, 5)), rng.normal(size=5)
    labels = np.array([0, 4, 2, 2])

    def ce(logits, y):
        return -(logits[y] - np.log(np.exp(logits).sum()))

    ref = np.zeros((4, 3))
    for i in range(4):
        base = ce(f0[i] @ kernel + bias, labels[i])
        inc = []
        for j in range(3):
            fj = f0[i].copy()
            fj[j] = 0.0
            inc.append(ce(fj @ kernel + bias, labels[i]) - base)
        ref[i] = np.exp(inc) / np.exp(inc).sum()
    got = delta_attention(
        jnp.asarray(f0, jnp.float32), jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32), labels
    )
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def np_bss(f, k):
    s = np.linalg.svd(np.asarray(f, np.float64), compute_uv=False)
    return (np.sort(s)[:k] ** 2).sum()


@pytest.mark.parametrize("shape,k", [((8, 5), 1), ((8, 5), 3), ((4, 6), 2)])
def test_bss_reference(shape, k):
    rng = np.random.default_rng(3)
    f = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(
        jax.jit(batch_spectral_shrinkage, static_argnums=1)(f, k), np_bss(f, k), rtol=1e-4, atol=1e-6
    )
    perm = rng.permutation(shape[0])
    np.testing.assert_allclose(
        batch_spectral_shrinkage(f[perm], k), batch_spectral_shrinkage(f, k), rtol=1e-4, atol=1e-6
    )
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda a: batch_spectral_shrinkage(a, k)), (np.float64(f),), order=1)


def test_bss_closed_form_and_bad_inputs():
    # a rank-deficient batch has a zero smallest singular value
    f = np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    np.testing.assert_allclose(batch_spectral_shrinkage(f, 1), 0.0, atol=1e-5)
    np.testing.assert_allclose(
        batch_spectral_shrinkage(np.diag([3.0, 1.0, 2.0]).astype(np.float32), 2), 1.0 + 4.0, rtol=1e-5
    )
    with pytest.raises(LossError, match=r"k must be an integer in \[1, min\(n, d\)\] = \[1, 3\]"):
        batch_spectral_shrinkage(f, 4)
    with pytest.raises(LossError, match="2-D"):
        batch_spectral_shrinkage(np.zeros((3,)))
    with pytest.raises(LossError, match="empty batch"):
        batch_spectral_shrinkage(np.zeros((0, 3)))


def test_vmap_and_bfloat16():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(3, 6, 4)).astype(np.float32)
    f0 = rng.normal(size=(3, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(
        jax.vmap(batch_spectral_shrinkage)(f), [batch_spectral_shrinkage(a) for a in f], rtol=1e-4
    )
    np.testing.assert_allclose(
        jax.jit(jax.vmap(feature_map_distance))(f, f0), [feature_map_distance(a, b) for a, b in zip(f, f0)], rtol=1e-5
    )
    for fn, args in ((batch_spectral_shrinkage, (f[0],)), (feature_map_distance, (f[0], f0[0]))):
        got = fn(*(jnp.asarray(a, jnp.bfloat16) for a in args))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, fn(*args), rtol=5e-2, atol=2e-2)
    rng2 = np.random.default_rng(5)
    w = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params(rng2))
    assert l2_sp(w, _params(rng2)).dtype == jnp.float32


def test_registered_terms_read_their_anchor_state():
    rng = np.random.default_rng(6)
    w, w0 = _params(rng), _params(rng)
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 3, 0])

    def apply_model(p, xx, train=True):
        feats = jnp.tanh(xx @ p["backbone"]["w"] + p["backbone"]["b"])
        return feats @ p["head"]["kernel"] + p["head"]["bias"], feats

    logits, feats = apply_model(w, x)
    inputs = LossInputs(
        source_features=feats,
        target_features=feats,
        source_logits=logits,
        target_logits=logits,
        source_labels=labels,
        progress=jnp.zeros(()),
        key=jax.random.key(0),
        source_inputs=x,
        target_inputs=x,
        params=w,
        apply_model=apply_model,
    )

    def value(name, **hp):  # the term on the anchor w0
        return get_loss(name).term(**hp).apply(TermState(state=w0), inputs)[0]

    # init keeps the parameters it is given (the start of training) as the anchor
    assert get_loss("l2sp").term().init(jax.random.key(0), inputs).state is w
    assert get_loss("delta").term().init(jax.random.key(0), inputs).state is w
    np.testing.assert_allclose(value("l2sp"), l2_sp(w, w0), rtol=1e-6)
    np.testing.assert_allclose(value("l2sp", new="head|backbone", beta=1.0), 0.5 * _np_sq(w), rtol=1e-5)
    _, f0 = apply_model(w0, x)
    np.testing.assert_allclose(value("delta"), np_fm(feats, f0), rtol=1e-5)
    att = delta_attention(f0, w0["head"]["kernel"], w0["head"]["bias"], labels)
    np.testing.assert_allclose(value("delta", attention="head"), np_fm(feats, f0, np.asarray(att)), rtol=1e-5)
    np.testing.assert_allclose(get_loss("bss").fn(inputs, domain="both"), 2 * np_bss(feats, 1), rtol=1e-4, atol=1e-6)
    with pytest.raises(LossError, match="needs the model parameters"):
        get_loss("l2sp").term().init(jax.random.key(0), LossInputs(**{**inputs.__dict__, "params": None}))
    with pytest.raises(LossError, match="unknown attention"):
        parse_method("cross_entropy + delta(attention=spatial)")


def test_presets_parse():
    assert [t.loss for t in parse_method("l2sp").terms] == ["cross_entropy", "l2sp"]
    assert parse_method("bss").spec() == "cross_entropy + 0.001*bss"


@pytest.mark.slow  # a real train() run: ~3 XLA compilations
def test_end_to_end_regularizers_train():
    """At step 1 the model is its anchor: delta is 0 and l2sp is beta/2 ||head||^2 only."""
    spec = "cross_entropy + 1.0*l2sp + 0.1*delta(attention=head) + 0.001*bss"
    r = train(ExperimentConfig(method=spec, steps=3, **TINY))
    logs = [h for h in r.history if "loss" in h]
    assert len(logs) == 3 and all(
        np.isfinite(h[k]) for h in logs for k in ("loss", "loss/l2sp", "loss/delta", "loss/bss")
    )
    assert abs(logs[0]["loss/delta"]) < 1e-6 and logs[-1]["loss/delta"] > 0
    head0 = r.state.term_states["l2sp"]["head"]
    np.testing.assert_allclose(logs[0]["loss/l2sp"], 0.5 * 0.01 * _np_sq(head0), rtol=1e-4)
