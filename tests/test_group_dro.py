"""GroupDRO: a stateful term whose group weights live in the train state (DomainBed's form)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import DomainView, LossError, LossInputs, get_loss
from da_framework.train.loop import train
from da_framework.train.method import parse_method


def _np_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _inputs(logits: list[np.ndarray], labels: list[np.ndarray]) -> LossInputs:
    views = tuple(DomainView(i, True, jnp.zeros((len(y), 2)), jnp.asarray(z, jnp.float32), jnp.asarray(y))
                  for i, (z, y) in enumerate(zip(logits, labels)))
    z = jnp.concatenate([v.logits for v in views])
    target = DomainView(len(views), False, jnp.zeros((2, 2)), jnp.zeros((2, 3)))
    return LossInputs(jnp.zeros((len(z), 2)), jnp.zeros((2, 2)), z, jnp.zeros((2, 3)),
                      jnp.concatenate([v.labels for v in views]), jnp.zeros(()), jax.random.key(0),
                      domains=(*views, target))


def test_group_weights_and_loss_match_a_float64_reference_over_two_steps():
    rng = np.random.default_rng(0)
    eta = 0.5
    term = get_loss("group_dro").term(eta=eta)
    q_np = np.ones(3)
    state = None
    for _ in range(2):
        logits = [rng.normal(0, 1 + 2 * g, (4, 3)) for g in range(3)]  # domain 2 is the hardest
        labels = [rng.integers(0, 3, 4) for _ in range(3)]
        inputs = _inputs(logits, labels)
        state = state or term.init(jax.random.key(0), inputs)
        loss, q, metrics = term.apply(state, inputs)
        state = state._replace(state=q)
        losses = np.array([_np_ce(z, y) for z, y in zip(logits, labels)])
        q_np = q_np * np.exp(eta * losses)
        q_np /= q_np.sum()
        np.testing.assert_allclose(np.asarray(q), q_np, rtol=1e-5)
        np.testing.assert_allclose(float(loss), float(losses @ q_np), rtol=1e-5)
        assert [float(metrics[f"q{g}"]) for g in range(3)] == pytest.approx(list(q_np), rel=1e-5)
    # the gradient treats q as a constant: d loss / d logits of domain g = q_g (softmax - onehot) / n_g
    inputs = _inputs(logits, labels)

    def total(z):
        views = tuple(v if not v.labelled else DomainView(v.domain_id, True, v.features, z[4 * v.domain_id:4 * v.domain_id + 4], v.labels)
                      for v in inputs.domains)
        return term.apply(state, LossInputs(**{**inputs.__dict__, "domains": views}))[0]

    z = jnp.concatenate([jnp.asarray(x, jnp.float32) for x in logits])
    g = np.asarray(jax.grad(total)(z))
    q_next = q_np * np.exp(eta * np.array([_np_ce(a, b) for a, b in zip(logits, labels)]))
    q_next /= q_next.sum()
    for d in range(3):
        p = np.exp(logits[d] - logits[d].max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        expected = q_next[d] * (p - np.eye(3)[labels[d]]) / 4
        np.testing.assert_allclose(g[4 * d:4 * d + 4], expected, rtol=1e-4, atol=1e-7)


def test_bad_eta_is_refused_at_parse_time():
    with pytest.raises(LossError, match="eta must be > 0"):
        parse_method("group_dro(eta=0.0)")


def test_group_dro_trains_over_three_environments_and_keeps_its_weights_in_the_state():
    config = ExperimentConfig(source="digits/source,digits/blur,digits/noise", target="digits/rotate",
                              method="group_dro(eta=0.1)", steps=3, batch_size=8, log_every=1, eval_batch_size=256,
                              model="mlp", model_kwargs={"hidden": (16,)})
    r = train(config)
    q = np.asarray(r.state.term_states["group_dro"])
    assert q.shape == (3,) and q.sum() == pytest.approx(1.0, rel=1e-6)
    logged = [h for h in r.history if "loss/group_dro/q0" in h]
    assert len(logged) == 3
    np.testing.assert_allclose([logged[-1][f"loss/group_dro/q{g}"] for g in range(3)], q, rtol=1e-6)
    assert not np.allclose(q, 1 / 3)  # the weights moved away from uniform


def test_the_initial_state_already_has_one_weight_per_environment():
    """init sees the step's per-domain views, so q starts as (K,) ones and the state keeps one shape
    (a checkpoint of step 0 restores into step 1's template; the step compiles once)."""
    import jax

    from da_framework.train.loop import batch_streams, build, init_state

    config = ExperimentConfig(source="digits/source,digits/blur,digits/noise", target="digits/rotate",
                              method="group_dro", steps=3, batch_size=8, model="mlp", model_kwargs={"hidden": (16,)})
    exp = build(config)
    src, tgt = batch_streams(exp, 0, config.batch_size)
    state = init_state(exp, jax.random.key(0), next(iter(src)), next(iter(tgt)))
    np.testing.assert_array_equal(np.asarray(state.term_states["group_dro"]), np.ones(3, np.float32))
