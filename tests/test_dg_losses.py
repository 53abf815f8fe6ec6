"""DomainBed's stateless DG algorithms as loss terms, each against a NumPy float64 re-derivation."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.cad import cad_term, condcad_term
from da_framework.losses.coral_envs import coral_envs_term
from da_framework.losses.dg_common import anneal_weight
from da_framework.losses.ib import ib_term
from da_framework.losses.irm import irm_penalty, irm_term
from da_framework.losses.mixup_envs import mixup_draws, mixup_objective, mixup_term
from da_framework.losses.mmd_envs import mmd_envs_term
from da_framework.losses.registry import DomainView, LossError, LossInputs
from da_framework.losses.sd import sd_term
from da_framework.losses.vrex import vrex_term
from da_framework.train.loop import train

K, N, D, C = 3, 6, 4, 3


def _envs(seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = [rng.normal(i * 0.5, 1.0 + 0.3 * i, (N, D)) for i in range(K)]
    logits = [rng.normal(0.0, 1.5, (N, C)) for _ in range(K)]
    labels = [rng.integers(0, C, N) for _ in range(K)]
    return feats, logits, labels


def _inputs(feats, logits, labels, progress=0.0, xs=None, **extra) -> LossInputs:
    views = tuple(
        DomainView(i, True, jnp.asarray(f, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.int32),
                   None if xs is None else jnp.asarray(xs[i], jnp.float32))
        for i, (f, z, y) in enumerate(zip(feats, logits, labels))
    )
    cat = lambda arrays, dt: jnp.concatenate([jnp.asarray(a, dt) for a in arrays])  # noqa: E731
    return LossInputs(
        source_features=cat(feats, jnp.float32), target_features=jnp.zeros((2, D)), source_logits=cat(logits, jnp.float32),
        target_logits=jnp.zeros((2, C)), source_labels=cat(labels, jnp.int32), progress=jnp.float32(progress),
        key=jax.random.key(7), domains=views, **extra)


def _ce(z: np.ndarray, y: np.ndarray) -> float:
    m = z.max(1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z - m).sum(1)))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_irm_two_halves_penalty_and_domainbed_anneal():
    """dCE(w z, y)/dw at w = 1 is mean_i(sum_k p_ik z_ik - z_iy): the product over the two halves,
    averaged over environments; weight 1.0 before step 500 of 5001 and irm_lambda from it."""
    feats, logits, labels = _envs()

    def dw(z, y):
        return np.mean((_softmax(z) * z).sum(1) - z[np.arange(len(y)), y])

    ref = np.mean([dw(z[::2], y[::2]) * dw(z[1::2], y[1::2]) for z, y in zip(logits, labels)])
    one = irm_penalty(jnp.asarray(logits[0], jnp.float32), jnp.asarray(labels[0]))
    np.testing.assert_allclose(float(one), dw(logits[0][::2], labels[0][::2]) * dw(logits[0][1::2], labels[0][1::2]),
                               rtol=1e-5)
    irm = jax.jit(lambda p: irm_term(_inputs(feats, logits, labels, progress=p)))
    before, after = irm(499 / 5001), irm(500 / 5001)
    np.testing.assert_allclose(float(before), ref, rtol=1e-5)
    np.testing.assert_allclose(float(after), 100.0 * ref, rtol=1e-5)
    short = irm_term(_inputs(feats, logits, labels, progress=0.1), irm_lambda=3.0, irm_penalty_anneal_iters=10, steps_of=100)
    np.testing.assert_allclose(float(short), 3.0 * ref, rtol=1e-5)
    with pytest.raises(LossError, match="at least 2 examples"):
        irm_term(_inputs([f[:1] for f in feats], [z[:1] for z in logits], [y[:1] for y in labels]))


def test_anneal_weight_switches_at_the_step():
    steps = jnp.arange(0, 1001) / 1000
    w = np.asarray(jax.vmap(lambda p: anneal_weight(p, 9.0, 250, 1.0, steps_of=1000))(steps))
    assert (w[:250] == 1.0).all() and (w[250:] == 9.0).all()


def test_vrex_is_the_population_variance_of_environment_risks():
    feats, logits, labels = _envs(1)
    risks = np.array([_ce(z, y) for z, y in zip(logits, labels)])
    ref = np.mean((risks - risks.mean()) ** 2)
    np.testing.assert_allclose(float(vrex_term(_inputs(feats, logits, labels))), ref, rtol=1e-5)
    np.testing.assert_allclose(float(vrex_term(_inputs(feats, logits, labels, progress=0.5))), 10.0 * ref, rtol=1e-5)
    same = vrex_term(_inputs(feats, [logits[0]] * K, [labels[0]] * K))
    np.testing.assert_allclose(float(same), 0.0, atol=1e-9)


def test_coral_envs_is_domainbeds_mean_cov_over_pairs():
    feats, logits, labels = _envs(2)

    def mean_cov(x, y):
        cx, cy = np.cov(x, rowvar=False, ddof=1), np.cov(y, rowvar=False, ddof=1)
        return np.mean((x.mean(0) - y.mean(0)) ** 2) + np.mean((cx - cy) ** 2)

    ref = np.mean([mean_cov(a, b) for a, b in itertools.combinations(feats, 2)])
    np.testing.assert_allclose(float(coral_envs_term(_inputs(feats, logits, labels), mmd_gamma=2.0)), 2.0 * ref, rtol=1e-5)
    assert float(coral_envs_term(_inputs(feats[:1], logits[:1], labels[:1]))) == 0.0  # one environment: no pair


def test_mmd_envs_is_domainbeds_gaussian_mmd_over_pairs():
    feats, logits, labels = _envs(3)
    feats = [f * 0.3 for f in feats]  # distances where several of the fixed widths matter
    gammas = (0.001, 0.01, 0.1, 1, 10, 100, 1000)

    def k(x, y):
        d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-g * d2) for g in gammas)

    ref = np.mean([k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean() for a, b in itertools.combinations(feats, 2)])
    np.testing.assert_allclose(float(mmd_envs_term(_inputs(feats, logits, labels))), ref, rtol=1e-4)


def test_sd_and_ib():
    feats, logits, labels = _envs(4)
    np.testing.assert_allclose(float(sd_term(_inputs(feats, logits, labels))), 0.1 * np.mean(np.concatenate(logits) ** 2),
                               rtol=1e-5)
    ib = np.mean([np.var(f, axis=0, ddof=1).mean() for f in feats])
    assert float(ib_term(_inputs(feats, logits, labels, progress=0.0))) == 0.0  # weight 0 before the anneal step
    np.testing.assert_allclose(float(ib_term(_inputs(feats, logits, labels, progress=0.5))), 100.0 * ib, rtol=1e-5)


def _cad_np(z, y, d, t=0.1, conditional=False):
    """DomainBed's bn_loss (is_flipped, no normalisation, no projection), written with loops."""
    n = len(z)
    s = z @ z.T / t
    rows = []
    for i in range(n):
        others = [k for k in range(n) if k != i]
        same = [k for k in others if y[k] == y[i]]
        if conditional:
            pos = [j for j in same if d[j] != d[i]]
            if not pos:
                continue
            denom = np.log(np.sum(np.exp(s[i, same])))
        else:
            if not same:
                continue
            pos = [j for j in others if d[j] != d[i]]
            denom = np.log(np.sum(np.exp(s[i, others])))
        if not pos:
            continue  # -inf inside: the row is not finite, DomainBed's finite_mean drops it
        rows.append(-(t / 0.07) * np.log(np.sum(np.exp(s[i, pos] - denom))))
    return float(np.mean(rows)) if rows else 0.0


@pytest.mark.parametrize("conditional", [False, True])
def test_cad_and_condcad_match_a_loop_reference(conditional):
    feats, logits, labels = _envs(5)
    feats = [f * 0.4 for f in feats]
    labels = [np.array([0, 0, 1, 1, 2, 0]), np.array([1, 1, 1, 0, 2, 2]), np.array([2, 2, 2, 2, 2, 2])]
    z = np.concatenate(feats)
    y, d = np.concatenate(labels), np.repeat(np.arange(K), N)
    ref = _cad_np(z, y, d, conditional=conditional)
    term = condcad_term if conditional else cad_term
    got = jax.jit(lambda: term(_inputs(feats, logits, labels), lmbda=1.0))()
    np.testing.assert_allclose(float(got), ref, rtol=1e-4)
    grads = jax.jit(jax.grad(lambda f: term(_inputs([f] + feats[1:], logits, labels))))(jnp.asarray(feats[0], jnp.float32))
    assert np.isfinite(np.asarray(grads)).all()


def _linear_mixup_case():
    rng = np.random.default_rng(6)
    xs = [rng.normal(i, 1.0, (N, 2, 2, 1)) for i in range(K)]
    labels = [rng.integers(0, C, N) for _ in range(K)]
    w = rng.normal(size=(4, C))
    apply_model = lambda p, x, train=True: (x.reshape(x.shape[0], -1) @ p, x.reshape(x.shape[0], -1))  # noqa: E731
    feats = [x.reshape(N, -1) for x in xs]
    inputs = _inputs(feats, [f @ w for f in feats], labels, xs=xs, apply_model=apply_model,
                     params=jnp.asarray(w, jnp.float32))
    return xs, labels, w, inputs


def _mixup_np(xs, labels, w, perm, lams) -> float:
    """DomainBed's Mixup.update objective for a linear model: pairs (perm[p], perm[p + 1 mod K])."""
    total = 0.0
    for p in range(len(xs)):
        i, j = int(perm[p]), int(perm[(p + 1) % len(xs)])
        mixed = (lams[p] * xs[i] + (1 - lams[p]) * xs[j]).reshape(len(labels[i]), -1)
        total += lams[p] * _ce(mixed @ w, labels[i]) + (1 - lams[p]) * _ce(mixed @ w, labels[j])
    return total / len(xs)


def test_mixup_objective_against_a_loop_reference_with_a_linear_model():
    xs, labels, w, _ = _linear_mixup_case()
    perm, lams = np.array([2, 0, 1]), np.array([0.3, 0.9, 0.5])
    got = mixup_objective(lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w, jnp.float32),
                          jnp.asarray(np.stack(xs), jnp.float32), jnp.asarray(np.stack(labels)), jnp.asarray(perm),
                          jnp.asarray(lams, jnp.float32))
    np.testing.assert_allclose(float(got), _mixup_np(xs, labels, w, perm, lams), rtol=1e-5)
    one = mixup_objective(lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w, jnp.float32),
                          jnp.asarray(xs[0][None], jnp.float32), jnp.asarray(labels[0][None]), jnp.array([0]),
                          jnp.array([0.37]))
    np.testing.assert_allclose(float(one), _ce(xs[0].reshape(N, -1) @ w, labels[0]), rtol=1e-5)  # paired with itself
    with pytest.raises(LossError, match="apply_model"):
        mixup_term(_inputs(*_envs()))


@pytest.mark.slow  # Beta sampling takes seconds to compile on a loaded 2-core CPU
def test_mixup_term_draws_its_pairs_and_weights_from_its_key():
    xs, labels, w, inputs = _linear_mixup_case()
    perm, lams, got = jax.jit(lambda: (*mixup_draws(inputs.key, K, 0.2), mixup_term(inputs)))()
    perm, lams = np.asarray(perm), np.asarray(lams, np.float64)
    assert sorted(perm.astype(int).tolist()) == list(range(K)) and ((lams > 0) & (lams < 1)).all()
    np.testing.assert_allclose(float(got), _mixup_np(xs, labels, w, perm, lams), rtol=1e-4)


@pytest.mark.parametrize("method", ["cross_entropy + irm + vrex + sd + ib",
                                    "cross_entropy + coral_envs + mmd_envs + cad + condcad", "mixup"])
def test_dg_terms_train_by_name_over_three_source_environments(method):
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0", method=method, steps=2, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=256,
        model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    logged = [h for h in result.history if "loss" in h]
    keys = [t.strip().split("*")[-1] for t in method.split("+")]
    for key in keys:
        values = [h[f"loss/{key}"] for h in logged]
        assert len(values) == 2 and np.isfinite(values).all(), (key, values)
    assert {f"source_val_accuracy/rdigits/{a}" for a in (15, 30, 45)} <= set(result.metrics)
    assert result.compile_count == 1
