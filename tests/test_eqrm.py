"""EQRM (DomainBed's form): the KDE quantile of hand risks against a NumPy/SciPy float64 bisection (and
its gradient against the bracket-weight derivation), the burn-in switch and Adam reset, errors, a run by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from da_framework.config import ExperimentConfig
from da_framework.losses.eqrm import eqrm_term, gauss_optimal_bandwidth, kde_cdf, kde_quantile
from da_framework.losses.registry import DomainView, LossError, LossInputs
from da_framework.train.loop import train
from da_framework.train.method import parse_method
from da_framework.train.step import optimizer_resets

RISKS = np.array([0.9, 0.35, 1.6, 0.5])  # hand risks of four environments


def _np_bandwidth(r: np.ndarray) -> float:
    return 1.06 * np.std(r, ddof=1) * len(r) ** -0.2


def _np_cdf(t: float, r: np.ndarray, h: float) -> float:
    return float(np.mean(stats.norm.cdf((t - r) / h)))


def _np_bisection(r: np.ndarray, alpha: float, steps: int = 32) -> tuple[float, float, float]:
    """DomainBed's continuous_bisect_fun_left on the KDE CDF in float64; also the final midpoint's weights
    (a, b) on the initial bracket ends, which autograd differentiates through."""
    r = np.sort(r)
    h = _np_bandwidth(r)
    z = stats.norm.ppf(alpha)
    ends = [(r[0] + h * z, np.array([1.0, 0.0])), (r[-1] + h * z, np.array([0.0, 1.0]))]
    k = (0.5 * (ends[0][0] + ends[1][0]), 0.5 * (ends[0][1] + ends[1][1]))
    for _ in range(steps):
        ends[int(_np_cdf(k[0], r, h) > alpha)] = k
        nxt = (0.5 * (ends[0][0] + ends[1][0]), 0.5 * (ends[0][1] + ends[1][1]))
        if nxt[0] == k[0]:
            break
        k = nxt
    return k[0], k[1][0], k[1][1]


def _inputs(logits, labels, progress: float) -> LossInputs:
    views = tuple(DomainView(e, True, jnp.zeros((len(y), 2)), jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.int32))
                  for e, (z, y) in enumerate(zip(logits, labels)))
    return LossInputs(source_features=jnp.zeros((sum(len(y) for y in labels), 2)), target_features=jnp.zeros((2, 2)),
                      source_logits=jnp.concatenate([v.logits for v in views]), target_logits=jnp.zeros((2, 3)),
                      source_labels=jnp.concatenate([v.labels for v in views]), progress=jnp.float32(progress),
                      key=jax.random.key(0), domains=views)


def _np_ce(z: np.ndarray, y: np.ndarray) -> float:
    m = z.max(1, keepdims=True)
    return float(np.mean(m[:, 0] + np.log(np.exp(z - m).sum(1)) - z[np.arange(len(y)), y]))


@pytest.mark.parametrize("alpha", [0.5, 0.75, 0.95, 0.3])
def test_quantile_of_hand_risks_matches_a_float64_bisection_and_the_exact_kde_quantile(alpha):
    got = float(kde_quantile(jnp.asarray(RISKS, jnp.float32), alpha))
    ref, _, _ = _np_bisection(RISKS, alpha)
    assert got == pytest.approx(ref, abs=2e-6)
    h = _np_bandwidth(RISKS)
    exact = optimize.brentq(lambda t: _np_cdf(t, RISKS, h) - alpha, -10, 10, xtol=1e-14)
    assert ref == pytest.approx(exact, abs=1e-8)  # 32 halvings of a bracket narrower than 2 land on the root
    assert float(kde_cdf(jnp.float32(got), jnp.asarray(RISKS, jnp.float32), jnp.float32(h))) == pytest.approx(alpha, abs=1e-5)


def test_bandwidth_is_the_gauss_optimal_rule():
    assert float(gauss_optimal_bandwidth(jnp.asarray(RISKS, jnp.float32))) == pytest.approx(_np_bandwidth(RISKS), rel=1e-6)
    # hand value: std of [0, 2] (ddof 1) is sqrt(2); 1.06 * sqrt(2) * 2^-0.2
    assert float(gauss_optimal_bandwidth(jnp.array([0.0, 2.0]))) == pytest.approx(1.06 * np.sqrt(2) * 2 ** -0.2, rel=1e-6)


def test_gradient_is_domainbeds_through_the_bracket_ends():
    alpha = 0.75
    grad = np.asarray(jax.grad(lambda r: kde_quantile(r, alpha))(jnp.asarray(RISKS, jnp.float32)))
    _, a, b = _np_bisection(RISKS, alpha)
    n, z = len(RISKS), stats.norm.ppf(alpha)
    dstd = (RISKS - RISKS.mean()) / ((n - 1) * np.std(RISKS, ddof=1))
    expected = z * 1.06 * n ** -0.2 * dstd
    expected[np.argmin(RISKS)] += a
    expected[np.argmax(RISKS)] += b
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    assert a + b == pytest.approx(1.0)


def test_log_tail_branch_and_equal_risks():
    q = -5.0  # alpha = 1 - exp(-5)
    h = _np_bandwidth(RISKS)
    assert float(kde_quantile(jnp.asarray(RISKS, jnp.float32), q)) == pytest.approx(np.mean(RISKS + h * np.sqrt(10)), rel=1e-6)
    same = jnp.full((3,), 0.7)
    value, grad = jax.value_and_grad(lambda r: kde_quantile(r, 0.9))(same)
    assert float(value) == pytest.approx(0.7) and np.isfinite(np.asarray(grad)).all()


def test_burn_in_is_erm_then_the_quantile():
    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 1 + e, (6, 3)) for e in range(3)]
    labels = [rng.integers(0, 3, 6) for _ in range(3)]
    risks = np.array([_np_ce(z, y) for z, y in zip(logits, labels)])
    # steps_of=10, burn-in 4: progress 0.3 -> count 3 (ERM), progress 0.4 -> count 4 (quantile)
    before = float(eqrm_term(_inputs(logits, labels, 0.3), eqrm_burnin_iters=4, steps_of=10))
    after = float(eqrm_term(_inputs(logits, labels, 0.4), eqrm_quantile=0.9, eqrm_burnin_iters=4, steps_of=10))
    assert before == pytest.approx(risks.mean(), rel=1e-5)
    assert after == pytest.approx(_np_bisection(risks, 0.9)[0], rel=1e-5)
    assert after > risks.mean()


def test_the_burn_in_step_resets_adam():
    assert optimizer_resets(parse_method("eqrm")) == [(2500.0, 5001.0, 1e-6)]
    assert optimizer_resets(parse_method("eqrm(eqrm_burnin_iters=3.7, steps_of=8)")) == [(3.7, 8.0, 1e-6)]


@pytest.mark.parametrize("hparams, match", [
    ({"eqrm_quantile": 1.0}, "eqrm_quantile must be in"),
    ({"eqrm_quantile": 0.0}, "eqrm_quantile must be in"),
    ({"eqrm_burnin_iters": -1}, "eqrm_burnin_iters must be >= 0"),
    ({"steps_of": 0}, "steps_of must be > 0"),
    ({"eqrm_quantile": "high"}, "eqrm_quantile must be a finite number"),
])
def test_bad_hyperparameters_are_one_line_errors(hparams, match):
    rng = np.random.default_rng(0)
    inputs = _inputs([rng.normal(size=(4, 3)) for _ in range(2)], [np.arange(4) % 3] * 2, 0.0)
    with pytest.raises(LossError, match=match):
        eqrm_term(inputs, **hparams)


def test_one_environment_and_unknown_hyperparameters_are_refused():
    with pytest.raises(LossError, match="at least 2 training environments"):
        eqrm_term(_inputs([np.zeros((4, 3))], [np.arange(4) % 3], 0.0))
    with pytest.raises(LossError, match="eqrm_lr must be > 0"):
        eqrm_term(_inputs([np.zeros((4, 3))] * 2, [np.arange(4) % 3] * 2, 0.0), eqrm_lr=0.0)
    with pytest.raises(LossError, match="has no hyper-parameter 'eqrm_rate'"):
        parse_method("eqrm(eqrm_rate=1e-6)")


def test_eqrm_trains_by_name_over_three_rdigits_environments():
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0",
        method="eqrm(eqrm_burnin_iters=2, steps_of=4)", steps=4, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=256,
        model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    values = [h["loss/eqrm"] for h in result.history if "loss/eqrm" in h]
    assert len(values) == 4 and np.isfinite(values).all()
    assert result.compile_count == 1


def _np_adam_first_step(g: np.ndarray, lr: float, eps: float = 1e-8) -> np.ndarray:
    """Adam's update from a fresh state in float64: m = (1-b1) g, v = (1-b2) g^2, bias-corrected."""
    m_hat, v_hat = g, g * g
    return -lr * m_hat / (np.sqrt(v_hat) + eps)


def test_the_burn_in_restarts_adam_at_eqrm_lr():
    """Steps 0-1 train at the run's lr; the step at the burn-in starts a fresh Adam at eqrm_lr (DomainBed's)."""
    from da_framework.models.registry import make_model
    from da_framework.train.optimizers import build_optimizer
    from da_framework.train.state import init_train_state
    from da_framework.train.step import make_train_step

    model = make_model("mlp", 3, None, hidden=(8,))
    method = parse_method("eqrm(eqrm_burnin_iters=2, eqrm_lr=1e-5, steps_of=4)")
    tx = build_optimizer("adam", 1e-2, inject_learning_rate=True)
    rng = np.random.default_rng(0)
    source = {"image": jnp.asarray(rng.normal(size=(18, 5)), jnp.float32),
              "label": jnp.asarray(np.tile(np.arange(3), 6), jnp.int32)}
    target = {"image": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}
    state = init_train_state(jax.random.key(0), model, method, tx, source["image"], target["image"], source["label"])
    step = jax.jit(make_train_step(model, method, tx, total_steps=4, num_sources=3))
    states = [state]
    for s in range(4):
        states.append(step(states[-1], source, target, jax.random.key(s))[0])

    def grads(st):
        def loss(params):
            return make_train_step(model, method, tx, total_steps=4, num_sources=3)(
                st.replace(params=params), source, target, jax.random.key(0))[1]["loss"]
        return jax.grad(loss)(st.params)

    def moved(a, b):
        return np.concatenate([np.asarray(x, np.float64).ravel() - np.asarray(y, np.float64).ravel()
                               for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))])

    g0 = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(grads(states[0]))])
    np.testing.assert_allclose(moved(states[1], states[0]), _np_adam_first_step(g0, 1e-2), rtol=1e-4, atol=1e-9)
    g2 = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(grads(states[2]))])
    np.testing.assert_allclose(moved(states[3], states[2]), _np_adam_first_step(g2, 1e-5), rtol=0, atol=2e-7)  # float32 params: ulp ~1e-7
    from optax import tree_utils

    assert float(tree_utils.tree_get(states[4].opt_state, "learning_rate")) == pytest.approx(1e-5)


def test_eqrm_lr_needs_a_constant_schedule():
    from da_framework.train.optimizers import OptimizerError

    config = ExperimentConfig(
        source="rdigits/15,rdigits/30", target="rdigits/0", method="eqrm", steps=2, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="cosine", model="mlp", model_kwargs={"hidden": (16,)})
    with pytest.raises(OptimizerError, match="needs lr_schedule='constant', got 'cosine'"):
        train(config)


def test_a_hand_built_step_without_an_injected_rate_is_a_one_line_error():
    import optax

    from da_framework.models.registry import make_model
    from da_framework.train.state import init_train_state
    from da_framework.train.step import make_train_step

    model, method, tx = make_model("mlp", 3, None, hidden=(4,)), parse_method("eqrm(eqrm_burnin_iters=1, steps_of=2)"), optax.adam(1e-3)
    xs = jnp.zeros((6, 5), jnp.float32)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xs[:2], jnp.zeros((6,), jnp.int32))
    step = make_train_step(model, method, tx, total_steps=2, num_sources=2)
    with pytest.raises(LossError, match="inject_learning_rate=True"):
        step(state, {"image": xs, "label": jnp.zeros((6,), jnp.int32)}, {"image": xs[:2]}, jax.random.key(1))
