"""Discrepancy / feature-matching losses against NumPy float64 references, and their properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from da_framework.config import ExperimentConfig
from da_framework.losses.cmd import cmd
from da_framework.losses.coral import coral
from da_framework.losses.jan import joint_mmd
from da_framework.losses.mmd import DEFAULT_ALPHAS, mk_mmd
from da_framework.losses.moments import moment_distance
from da_framework.losses.registry import LossError
from da_framework.losses.wasserstein import sliced_wasserstein, wasserstein_1d
from da_framework.train import parse_method, train

TINY = {
    "model": "lenet",
    "model_kwargs": {"channels": (4, 8), "dense": 32},
    "bottleneck_dim": 16,
    "batch_size": 16,
    "log_every": 5,
}


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 4)).astype(np.float32), (rng.normal(size=(7, 4)) * 1.3 + 0.5).astype(np.float32)


# ---------------------------------------------------------------- NumPy float64 references


def np_gauss(a, b, sq_scale, alphas):
    d2 = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum()
    return np.mean([math.exp(-d2 / (2 * al * sq_scale)) for al in alphas])


def np_linear_mmd(x, y, alphas=DEFAULT_ALPHAS, sq_scale=None):
    m = min(len(x), len(y)) // 2
    quads = [(x[2 * i], x[2 * i + 1], y[2 * i], y[2 * i + 1]) for i in range(m)]
    if sq_scale is None:
        d = [
            ((p - q).astype(np.float64) ** 2).sum()
            for s1, s2, t1, t2 in quads
            for p, q in ((s1, s2), (t1, t2), (s1, t2), (s2, t1))
        ]
        sq_scale = np.mean(d)
    h = [
        np_gauss(s1, s2, sq_scale, alphas)
        + np_gauss(t1, t2, sq_scale, alphas)
        - np_gauss(s1, t2, sq_scale, alphas)
        - np_gauss(s2, t1, sq_scale, alphas)
        for s1, s2, t1, t2 in quads
    ]
    return np.mean(h)


def np_joint_mmd(src_layers, tgt_layers, alphas, sq_scales, unbiased=False):
    n, m = len(src_layers[0]), len(tgt_layers[0])
    z_layers = [np.concatenate([s, t]).astype(np.float64) for s, t in zip(src_layers, tgt_layers)]
    scales = []
    for z, sc in zip(z_layers, sq_scales):
        if sc is None:
            nz = len(z)
            sc = sum(((z[i] - z[j]) ** 2).sum() for i in range(nz) for j in range(nz)) / (nz * (nz - 1))
        scales.append(sc)
    nz = n + m
    k = np.ones((nz, nz))
    for i in range(nz):
        for j in range(nz):
            for z, sc, al in zip(z_layers, scales, alphas):
                k[i, j] *= np_gauss(z[i], z[j], sc, al)
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        return (
            (kss.sum() - np.trace(kss)) / (n * (n - 1)) + (ktt.sum() - np.trace(ktt)) / (m * (m - 1)) - 2 * kst.mean()
        )
    return kss.mean() + ktt.mean() - 2 * kst.mean()


def np_coral(x, y):
    d = x.shape[1]
    cs, ct = np.cov(x.astype(np.float64), rowvar=False), np.cov(y.astype(np.float64), rowvar=False)
    return ((cs - ct) ** 2).sum() / (4 * d * d)


def np_cmd(x, y, k_max=5, width=1.0):
    x, y = x.astype(np.float64), y.astype(np.float64)
    out = np.linalg.norm(x.mean(0) - y.mean(0)) / width
    for k in range(2, k_max + 1):
        out += np.linalg.norm(((x - x.mean(0)) ** k).mean(0) - ((y - y.mean(0)) ** k).mean(0)) / width**k
    return out


def np_w_pp_1d(a, b, p=2.0):
    """Exact 1-D W_p^p by replicating both samples to a common size lcm(n, m) and sorting."""
    n, m = len(a), len(b)
    l = n * m // math.gcd(n, m)
    aa, bb = (
        np.sort(np.repeat(np.asarray(a, np.float64), l // n)),
        np.sort(np.repeat(np.asarray(b, np.float64), l // m)),
    )
    return np.mean(np.abs(aa - bb) ** p)


# ---------------------------------------------------------------- linear-time MMD


def test_linear_mmd_matches_reference(xy):
    x, y = xy
    np.testing.assert_allclose(mk_mmd(x, y, estimator="linear"), np_linear_mmd(x, y), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        jax.jit(lambda a, b: mk_mmd(a, b, estimator="linear", sq_scale=2.0))(x, y),
        np_linear_mmd(x, y, sq_scale=2.0),
        rtol=1e-4,
        atol=1e-6,
    )


def test_linear_mmd_averaged_over_pairings_is_the_unbiased_estimate():
    """E over random pairings of the linear statistic = the U-statistic (n = m, fixed kernel)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.8
    perms = np.stack([rng.permutation(6) for _ in range(4000)])
    perms_t = np.stack([rng.permutation(6) for _ in range(4000)])
    with jax.enable_x64(True):
        lin = np.asarray(
            jax.jit(jax.vmap(lambda a, b: mk_mmd(a, b, estimator="linear", sq_scale=2.0)))(x[perms], y[perms_t])
        )
        unbiased = float(mk_mmd(x, y, estimator="unbiased", sq_scale=2.0))
    assert lin.dtype == np.float64
    assert abs(lin.mean() - unbiased) < 4 * lin.std() / np.sqrt(len(lin))  # within 4 standard errors
    assert unbiased > 0.05 and lin.std() > 0  # the test is not vacuous


def test_linear_mmd_zero_on_identical_batches_and_gradients(xy):
    x, y = xy
    np.testing.assert_allclose(mk_mmd(x, x, estimator="linear"), 0.0, atol=1e-6)
    with jax.enable_x64(True):
        check_grads(
            jax.jit(lambda a, b: mk_mmd(a, b, estimator="linear", sq_scale=3.0)),
            (np.float64(x[:6]), np.float64(y[:6])),
            order=2,
        )
    with pytest.raises(LossError, match="linear estimator needs >= 2"):
        mk_mmd(jnp.zeros((1, 3)), jnp.zeros((4, 3)), estimator="linear")


# ---------------------------------------------------------------- JAN


def test_joint_mmd_matches_reference(xy):
    x, y = xy
    rng = np.random.default_rng(2)
    ps, pt = rng.dirichlet(np.ones(3), 10).astype(np.float32), rng.dirichlet(np.ones(3), 7).astype(np.float32)
    alphas, scales = (DEFAULT_ALPHAS, (1.0,)), (None, 0.92**2)
    for est, unb in (("biased", False), ("unbiased", True)):
        got = jax.jit(lambda a, b, c, d, est=est: joint_mmd((a, c), (b, d), alphas, scales, est))(x, y, ps, pt)
        np.testing.assert_allclose(got, np_joint_mmd((x, ps), (y, pt), alphas, scales, unb), rtol=1e-4, atol=1e-6)


def test_joint_mmd_one_layer_is_mk_mmd_and_properties(xy):
    x, y = xy
    jmmd = jax.jit(lambda s, t, ps, pt: joint_mmd((s, ps), (t, pt)))
    np.testing.assert_allclose(jax.jit(lambda a, b: joint_mmd((a,), (b,)))(x, y), mk_mmd(x, y), rtol=1e-5)
    np.testing.assert_allclose(jmmd(x, x, x[:, :2], x[:, :2]), 0.0, atol=1e-6)
    perm = np.random.default_rng(3).permutation(10)
    ps, pt = jax.nn.softmax(jnp.asarray(x[:, :3])), jax.nn.softmax(jnp.asarray(y[:, :3]))
    a = jmmd(x, y, ps, pt)
    np.testing.assert_allclose(jmmd(x[perm], y, ps[perm], pt), a, rtol=1e-5)
    np.testing.assert_allclose(jmmd(y, x, pt, ps), a, rtol=1e-5)
    with jax.enable_x64(True):
        check_grads(
            jax.jit(lambda a, b: joint_mmd((a, a[:, :2]), (b, b[:, :2]), sq_scales=(3.0, 1.0))),
            (np.float64(x[:5]), np.float64(y[:4])),
            order=1,
        )


def test_joint_mmd_bad_inputs(xy):
    x, y = xy
    with pytest.raises(LossError, match="same non-zero number"):
        joint_mmd((x,), (y, y))
    with pytest.raises(LossError, match="all layers must see the same examples"):
        joint_mmd((x, x[:5]), (y, y))
    with pytest.raises(LossError, match="feature widths differ"):
        joint_mmd((x,), (y[:, :2],))


# ---------------------------------------------------------------- CORAL, CMD, moments


def test_coral_matches_reference_and_properties(xy):
    x, y = xy
    np.testing.assert_allclose(jax.jit(coral)(x, y), np_coral(x, y), rtol=1e-4)
    np.testing.assert_allclose(coral(x, y), coral(y, x), rtol=1e-6)
    np.testing.assert_allclose(coral(x, x + 3.0), 0.0, atol=1e-6)  # a shift keeps the covariance
    perm = np.random.default_rng(4).permutation(10)
    np.testing.assert_allclose(coral(x[perm], y), coral(x, y), rtol=1e-5)
    with pytest.raises(LossError, match="at least 2 examples"):
        coral(x[:1], y)


def test_cmd_matches_reference_and_properties(xy):
    x, y = xy
    np.testing.assert_allclose(jax.jit(cmd)(x, y), np_cmd(x, y), rtol=1e-4)
    np.testing.assert_allclose(cmd(x, y, 3, 2.0), np_cmd(x, y, 3, 2.0), rtol=1e-4)
    np.testing.assert_allclose(cmd(x, y), cmd(y, x), rtol=1e-6)
    np.testing.assert_allclose(cmd(x, x), 0.0, atol=1e-7)
    assert np.all(np.isfinite(jax.grad(cmd)(x, x)))  # safe norm: no NaN at the minimum
    with pytest.raises(LossError, match="n_moments"):
        cmd(x, y, 0)
    with pytest.raises(LossError, match="interval"):
        cmd(x, y, 3, 0.0)


def test_moment_distance_reference_arbitrary_rank():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 3, 3, 2)), rng.normal(size=(4, 3, 3, 2)) + 0.3
    ref = sum(np.linalg.norm((a**k).mean((0, 1, 2)) - (b**k).mean((0, 1, 2))) for k in (1, 2, 3))
    np.testing.assert_allclose(moment_distance(a.astype(np.float32), b.astype(np.float32), 3, (1, 2)), ref, rtol=1e-4)
    ref2 = sum(np.linalg.norm((a**k).mean(0) - (b**k).mean(0)) for k in (1, 2))
    np.testing.assert_allclose(moment_distance(a.astype(np.float32), b.astype(np.float32)), ref2, rtol=1e-4)
    np.testing.assert_allclose(moment_distance(a, a), 0.0, atol=1e-7)
    with pytest.raises(LossError, match="reduce_axes"):
        moment_distance(a, b, 2, (0,))
    with pytest.raises(LossError, match="shapes differ"):
        moment_distance(a, b[:, :2])


# ---------------------------------------------------------------- sliced Wasserstein


@pytest.mark.parametrize("n,m,p", [(5, 5, 2.0), (4, 6, 2.0), (3, 7, 1.0), (6, 4, 3.0)])
def test_wasserstein_1d_exact(n, m, p):
    rng = np.random.default_rng(n * 10 + m)
    a, b = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.4
    got = wasserstein_1d(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), p)
    np.testing.assert_allclose(got, [np_w_pp_1d(a[:, j], b[:, j], p) for j in range(2)], rtol=1e-4, atol=1e-6)


def test_sliced_wasserstein_closed_forms():
    rng = np.random.default_rng(6)
    key = jax.random.key(0)
    a, b = rng.normal(size=(5, 1)), rng.normal(size=(8, 1))
    # d = 1: every direction is +-1, so SW_2^2 is the 1-D W_2^2
    np.testing.assert_allclose(sliced_wasserstein(a, b, key, 16), np_w_pp_1d(a[:, 0], b[:, 0]), rtol=1e-4)
    # a translation by mu: W_2^2 along theta is (theta . mu)^2, whose mean over the sphere is |mu|^2 / d
    x, mu = rng.normal(size=(9, 3)).astype(np.float32), np.array([1.0, -2.0, 0.5], np.float32)
    got = sliced_wasserstein(x, x + mu, key, 4096)
    np.testing.assert_allclose(got, (mu**2).sum() / 3, rtol=0.05)


def test_sliced_wasserstein_properties_and_gradients(xy):
    x, y = xy
    key = jax.random.key(1)
    swd = jax.jit(sliced_wasserstein, static_argnums=(3,))
    np.testing.assert_allclose(swd(x, x, key, 128), 0.0, atol=1e-7)
    np.testing.assert_allclose(swd(x, y, key, 128), swd(y, x, key, 128), rtol=1e-5)
    perm = np.random.default_rng(7).permutation(10)
    np.testing.assert_allclose(swd(x[perm], y, key, 128), swd(x, y, key, 128), rtol=1e-5)
    assert float(swd(x, y, key, 128)) != float(swd(x, y, jax.random.key(2), 128))
    with pytest.raises(LossError, match="p must be >= 1"):
        sliced_wasserstein(x, y, key, 8, 0.5)
    with pytest.raises(LossError, match="num_projections"):
        sliced_wasserstein(x, y, key, 0)
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda a, b: sliced_wasserstein(a, b, key, 8)), (np.float64(x), np.float64(y)), order=1)


# ---------------------------------------------------------------- shared checks over every loss

LOSSES = {
    "mmd_linear": lambda a, b: mk_mmd(a, b, estimator="linear"),
    "jan": lambda a, b: joint_mmd((a, jax.nn.softmax(a)), (b, jax.nn.softmax(b))),
    "coral": coral,
    "cmd": cmd,
    "moments": moment_distance,
    "swd": lambda a, b: sliced_wasserstein(a, b, jax.random.key(0), 32),
}


@pytest.mark.parametrize("name", LOSSES)
def test_jit_vmap_and_bfloat16(name, xy):
    fn = LOSSES[name]
    x, y = xy
    rng = np.random.default_rng(8)
    xs = np.stack([x, x * 0.5, x + 1.0]).astype(np.float32)
    ys = np.stack([y, y + rng.normal(size=y.shape), y * 2.0]).astype(np.float32)
    batched = jax.jit(jax.vmap(fn))(xs, ys)
    np.testing.assert_allclose(batched, [fn(a, b) for a, b in zip(xs, ys)], rtol=1e-4, atol=1e-6)
    ref = fn(x, y)
    got = fn(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
    assert got.dtype == jnp.float32 and np.isfinite(float(got))
    np.testing.assert_allclose(got, ref, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("name", LOSSES)
def test_bad_inputs_raise_loss_error(name):
    fn = LOSSES[name]
    with pytest.raises(LossError, match="differ"):
        fn(jnp.zeros((4, 3)), jnp.zeros((4, 5)))
    with pytest.raises(LossError, match="empty batch"):
        fn(jnp.zeros((0, 3)), jnp.zeros((4, 3)))
    if name != "moments":  # moments accept any rank by design
        with pytest.raises(LossError, match="2-D"):
            fn(jnp.zeros((4, 3, 2)), jnp.zeros((4, 3, 2)))


def test_presets_parse():
    for preset in ("coral", "cmd", "jan", "swd"):
        method = parse_method(preset)
        assert [t.loss for t in method.terms] == ["cross_entropy", preset]


@pytest.mark.slow  # a real train() run: ~3 XLA compilations
def test_end_to_end_discrepancy_terms_train():
    """One tiny run with every discrepancy term: it compiles once and the losses stay finite."""
    spec = "cross_entropy + 1.0*coral + 1.0*cmd + 1.0*jan + 1.0*swd + 1.0*moments + 1.0*mmd(estimator=linear)"
    r = train(ExperimentConfig(method=spec, steps=3, **TINY))
    assert r.compile_count == 1
    logged = [h for h in r.history if "loss" in h][-1]
    for k in ("loss", "loss/coral", "loss/cmd", "loss/jan", "loss/swd", "loss/moments", "loss/mmd"):
        assert np.isfinite(logged[k]), k
    # the logged total is the sum of the logged terms (all weights 1); the distances are >= 0
    # (JAN and the linear-time MMD estimate can be negative)
    terms = ("cross_entropy", "coral", "cmd", "jan", "swd", "moments", "mmd")
    np.testing.assert_allclose(logged["loss"], sum(logged[f"loss/{k}"] for k in terms), rtol=1e-5, atol=1e-6)
    assert all(logged[f"loss/{k}"] >= 0.0 for k in ("cross_entropy", "coral", "cmd", "swd", "moments"))
