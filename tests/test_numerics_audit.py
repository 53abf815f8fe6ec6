"""Regression tests for the numerics audit: each test fails on the code before its fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.detection.voc_eval import ImageDetections, ImageGroundTruth, evaluate_detections

# ----------------------------------------------------------------- VOC2007 11-point thresholds


def test_voc07_recall_exactly_at_threshold_is_not_counted():
    # 10 images with one object each; 3 correct detections, nothing else: recall .1 .2 .3 at
    # precision 1.  The devkit's thresholds np.arange(0, 1.1, 0.1) put "0.3" at
    # 0.30000000000000004, so only t = 0, .1, .2 see precision 1: AP = 3/11 (a 1e-12
    # tolerance gave 4/11 = 0.364).
    box = np.array([[0.0, 0.0, 1.0, 1.0]])
    gts = [ImageGroundTruth(box, np.array([0]), np.array([False])) for _ in range(10)]
    dets = [
        ImageDetections(
            box if i < 3 else np.zeros((0, 4)), np.array([0.9] if i < 3 else []), np.array([0] if i < 3 else [], int)
        )
        for i in range(10)
    ]
    out = evaluate_detections(dets, gts, num_classes=1, use_07_metric=True)
    assert out["ap"][0] == pytest.approx(3 / 11)
    # all-point AP is unaffected: 0.3
    assert evaluate_detections(dets, gts, num_classes=1)["ap"][0] == pytest.approx(0.3)


# ------------------------------------------------------------------ strong augmentation, x64


def test_random_blur_under_x64_keeps_float32():
    # dm-pix's blur convolved float32 images with a float64 kernel (sigma drawn in float64).
    from da_framework.data.augment import random_blur

    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), jnp.float32)
        out = random_blur(jax.random.key(1), x)
        assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert not jax.config.jax_enable_x64
    # the same key blurs the same way with x64 off (the x64 path only differs in dtypes)
    np.testing.assert_allclose(np.asarray(out), np.asarray(random_blur(jax.random.key(1), x)), atol=1e-5)


@pytest.mark.slow
def test_strong_augment_under_x64_keeps_float32():
    from da_framework.data.augment import strong_augment, weak_augment

    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), jnp.float32)
        out = strong_augment(jax.random.key(1), x, num_ops=1, magnitude=0.9)
        assert out.dtype == jnp.float32 and out.shape == x.shape
        assert bool(jnp.all(jnp.isfinite(out)))
        assert weak_augment(jax.random.key(2), x).dtype == jnp.float32
    assert not jax.config.jax_enable_x64


# ------------------------------------------------------------------------- CMD / moments NaN


def test_cmd_and_moment_distance_propagate_nan_and_keep_finite_gradient_at_zero():
    from da_framework.losses.cmd import cmd, safe_norm
    from da_framework.losses.moments import moment_distance

    rng = np.random.default_rng(0)
    s = rng.uniform(size=(16, 4)).astype(np.float32)
    t = rng.uniform(size=(12, 4)).astype(np.float32) ** 2
    assert float(cmd(s, t)) > 0.05
    s_nan = s.copy()
    s_nan[3, 1] = np.nan
    assert np.isnan(float(cmd(s_nan, t)))  # was exactly 0.0
    assert np.isnan(float(moment_distance(s_nan, t, 3)))
    # identical batches: value 0 and finite (zero) gradients
    np.testing.assert_allclose(cmd(s, s), 0.0, atol=1e-7)
    g = jax.grad(lambda a: cmd(a, s))(jnp.asarray(s))
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)  # every moment difference is 0: a minimum
    np.testing.assert_array_equal(jax.grad(safe_norm)(jnp.zeros(3)), np.zeros(3))
    np.testing.assert_allclose(safe_norm(jnp.array([3.0, 4.0])), 5.0)


# ------------------------------------------------------------- MMD / JMMD translation invariance


def _np_mk_mmd(x, y, alphas, unbiased=False):
    """Float64 reference with explicit differences (no norm expansion)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.concatenate([x, y])
    n, m, nz = len(x), len(y), len(x) + len(y)
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    k = np.mean([np.exp(-d2 / (2 * a * d2.sum() / (nz * (nz - 1)))) for a in alphas], 0)
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        within = (kss.sum() - np.trace(kss)) / (n * (n - 1)) + (ktt.sum() - np.trace(ktt)) / (m * (m - 1))
        return within - 2 * kst.mean()
    return kss.mean() + ktt.mean() - 2 * kst.mean()


@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
def test_mmd_and_jmmd_are_translation_invariant_in_float32(offset):
    from da_framework.losses.jan import joint_mmd
    from da_framework.losses.mmd import DEFAULT_ALPHAS, mk_mmd

    rng = np.random.default_rng(0)
    s = (rng.normal(size=(32, 16)) + offset).astype(np.float32)
    t = (rng.normal(size=(24, 16)) * 1.1 + 0.3 + offset).astype(np.float32)
    # before the fix (||x||^2 + ||y||^2 - 2xy in float32): 3% low at offset 1000, 6% for the U-statistic
    for est, unbiased in (("biased", False), ("unbiased", True)):
        ref = _np_mk_mmd(s, t, DEFAULT_ALPHAS, unbiased)
        np.testing.assert_allclose(float(mk_mmd(s, t, estimator=est)), ref, rtol=1e-4)
        np.testing.assert_allclose(float(joint_mmd((s,), (t,), estimator=est)), ref, rtol=1e-4)
    # JMMD with a second (offset) layer: the joint kernel is the product of the layers' kernels
    s2, t2 = s[:, :4] * 0.5, t[:, :4] * 0.5
    shifted = joint_mmd((s, s2), (t, t2))
    centred = joint_mmd((s - offset, s2 - offset / 2), (t - offset, t2 - offset / 2))
    np.testing.assert_allclose(float(shifted), float(centred), rtol=1e-4)


# ----------------------------------------------------------------------------- TCA stability


def test_tca_float32_inputs_match_float64_and_satisfy_the_paper_constraint():
    import scipy.linalg

    from da_framework.transfer import TransferError
    from da_framework.transfer.subspace import tca

    rng = np.random.default_rng(0)
    xs = (rng.normal(size=(60, 10)) * 3 + 5).astype(np.float32)
    xt = (rng.normal(size=(50, 10)) * 3 + 8).astype(np.float32)
    x = np.concatenate([xs, xt]).astype(np.float64)
    n = len(x)
    k = x @ x.T
    e = np.r_[np.full(60, 1 / 60), np.full(50, -1 / 50)]
    khk = k @ (np.eye(n) - 1.0 / n) @ k
    vals, vecs = scipy.linalg.eigh(khk, k @ np.outer(e, e) @ k + np.eye(n))
    vals, vecs = vals[::-1][:3], vecs[:, ::-1][:, :3]
    fit = tca(xs, xt, 3, mu=1.0)
    assert fit.components.dtype == jnp.float32
    # the float32 Cholesky route was off by ~1% here (and NaN on other draws)
    np.testing.assert_allclose(np.asarray(fit.eigenvalues, np.float64), vals, rtol=1e-5)
    w = np.asarray(fit.components, np.float64)
    # Pan et al. (2011) eq. 7: W^T K H K W = I (the old normalisation gave diag(lambda) ~ 1e6)
    np.testing.assert_allclose(w.T @ khk @ w, np.eye(3), atol=1e-4)
    z_ref = k @ (vecs / np.sqrt(vals))
    z = np.asarray(fit.transform(np.concatenate([xs, xt])), np.float64)
    np.testing.assert_allclose(np.abs(z), np.abs(z_ref), atol=1e-5 * np.abs(z_ref).max())
    # more components than the rank of K H K (d = 10 for the linear kernel): no W satisfies the constraint
    with pytest.raises(TransferError, match="rank"):
        tca(xs, xt, 11)


# ------------------------------------------------------------------------------ cross-entropy


def test_cross_entropy_out_of_range_labels_are_nan_under_jit_and_errors_eagerly():
    from da_framework.losses.classification import cross_entropy
    from da_framework.losses.registry import LossError

    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    logp = np.asarray(jax.nn.log_softmax(logits))
    ce = jax.jit(cross_entropy)
    np.testing.assert_allclose(ce(logits, jnp.array([0, 2])), -(logp[0, 0] + logp[1, 2]) / 2, rtol=1e-6)
    # traced labels: -1 was scored as class k-1 (equal to the line above), k gave NaN by accident
    for bad in ([0, -1], [0, 3], [-5, 1]):
        assert np.isnan(float(ce(logits, jnp.array(bad))))
        assert np.isnan(float(jax.jit(lambda a, b: cross_entropy(a, b, 0.1))(logits, jnp.array(bad))))
    # gradients of the valid examples stay finite when the loss is finite
    g = jax.grad(cross_entropy)(logits, jnp.array([0, 2]))
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(np.asarray(g), (np.exp(logp) - np.eye(3)[[0, 2]]) / 2, rtol=1e-5, atol=1e-7)
    # concrete labels are checked eagerly
    with pytest.raises(LossError, match=r"labels must be in \[0, 3\)"):
        cross_entropy(logits, jnp.array([0, -1]))
    with pytest.raises(LossError, match="empty batch"):
        cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))
    with pytest.raises(LossError, match="empty batch"):
        jax.jit(cross_entropy)(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))
    for eps in (-0.1, 1.0, 1.5):
        with pytest.raises(LossError, match="label_smoothing"):
            cross_entropy(logits, jnp.array([0, 2]), eps)
    with pytest.raises(LossError, match="integer"):
        cross_entropy(logits, jnp.array([0.0, 2.0]))


# ---------------------------------------------------------------------------- FixMatch NaN


def test_fixmatch_nan_weak_logits_give_nan():
    from da_framework.losses.fixmatch import confidence_mask, fixmatch_loss

    weak = jnp.array([[4.0, 0.0], [0.1, 0.0], [5.0, 0.0]])
    strong = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    ref = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(-2.0))) / 3  # rows 0, 2 pass tau = 0.95
    np.testing.assert_allclose(float(fixmatch_loss(weak, strong, 0.95)), ref, rtol=1e-6)
    bad = weak.at[1, 0].set(jnp.nan)  # an unconfident row: was masked to a finite loss
    assert np.isnan(float(jax.jit(fixmatch_loss)(bad, strong)))
    assert np.isnan(float(fixmatch_loss(bad.at[1, 0].set(jnp.inf), strong)))
    assert np.isnan(float(fixmatch_loss(weak, strong.at[0, 1].set(jnp.nan))))
    np.testing.assert_array_equal(np.isnan(np.asarray(confidence_mask(bad, 0.95))), [False, True, False])


# --------------------------------------------------------------------------- swd citation


def test_swd_is_registered_as_feature_alignment_not_lee_et_al():
    from da_framework.losses.registry import get_loss
    from da_framework.train.method import parse_method

    spec = get_loss("swd")
    assert "Lee" not in spec.reference and "Bonneel" in spec.reference  # Lee et al. is a two-classifier method
    assert "features" in spec.description
    assert [t.loss for t in parse_method("swd").terms] == ["cross_entropy", "swd"]  # records use the preset


# ------------------------------------------------- apply_model: dropout keys, MCD + FixMatch


def _tiny_batches():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)).astype(np.float32))
    xt = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)).astype(np.float32))
    return xs, xt, jnp.asarray([0, 1, 2, 0, 1, 2])


@pytest.mark.slow  # ~6 s: compiles a train step
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_apply_model_reruns_draw_independent_dropout_masks(dropout):
    import optax

    from da_framework.models.registry import make_model
    from da_framework.train.method import parse_method
    from da_framework.train.state import init_train_state
    from da_framework.train.step import make_train_step

    # identical views (no shift, no noise) and teacher == student at step 0: mean teacher's
    # consistency is 0 exactly when both re-runs share one dropout mask (the bug), > 0 otherwise
    model = make_model("mlp", 3, None, hidden=(32,), dropout=dropout)
    method = parse_method("cross_entropy + mean_teacher(pad=0, noise_std=0.0)")
    xs, xt, ys = _tiny_batches()
    tx = optax.sgd(0.1)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    step = jax.jit(make_train_step(model, method, tx, total_steps=10))
    _, metrics = step(state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(1))
    consistency = float(metrics["loss/mean_teacher"])
    if dropout:
        assert consistency > 1e-4
    else:  # control: without dropout the two re-runs agree
        assert consistency < 1e-12


@pytest.mark.slow  # ~14 s: compiles MCD's three sub-steps with FixMatch's strong augmentation
def test_mcd_with_fixmatch_trains():
    import optax

    from da_framework.methods.mcd import make_mcd_step
    from da_framework.models.registry import make_model
    from da_framework.train.method import parse_method
    from da_framework.train.state import init_train_state
    from da_framework.train.trainers import get_trainer

    model = make_model("mlp", 3, None, hidden=(8,))
    method = parse_method("cross_entropy + mcd(num_k=1) + fixmatch(threshold=0.0, num_ops=1, pad=0)")
    assert get_trainer("auto", method) is make_mcd_step
    xs, xt, ys = _tiny_batches()
    tx = optax.sgd(0.1)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    step = jax.jit(make_mcd_step(model, method, tx, total_steps=3))  # failed: LossInputs had no apply_model
    for i in range(3):
        before = state
        state, metrics = step(state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(i))
    assert int(state.step) == 3
    # the last step's source cross-entropy is that of its starting parameters (float64 NumPy)
    z = np.asarray(model.apply({"params": before.params["model"]}, xs)[0], np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(
        float(metrics["loss/cross_entropy"]), -np.mean(logp[np.arange(6), np.asarray(ys)]), rtol=1e-5
    )
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss/fixmatch"]) > 0.0
    np.testing.assert_allclose(
        float(metrics["loss"]),
        float(metrics["loss/cross_entropy"] + metrics["loss/mcd"] + metrics["loss/fixmatch"]),
        rtol=1e-5,
    )
