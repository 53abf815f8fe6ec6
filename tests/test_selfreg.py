"""SelfReg (DomainBed's form): the loss for fixed shuffles and lam against a NumPy float64 re-derivation
(projection MLP included), the same-class shuffles, the frozen / trained projection, errors, a run by name."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError, LossInputs, get_loss
from da_framework.losses.selfreg import projection_width, selfreg_draws, selfreg_penalty, within_class_permutation
from da_framework.train.loop import train
from da_framework.train.method import parse_method

N, D, C = 7, 3, 3


def _case(seed: int = 0, margin: float = 0.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (N, D))
    y = np.array([0, 1, 0, 2, 1, 0, 2])
    o = rng.normal(0.0, 1.0, (N, C)) + margin * np.eye(C)[y]
    return z, o, y


def _inputs(z, o, y, seed: int = 5) -> LossInputs:
    return LossInputs(source_features=jnp.asarray(z, jnp.float32), target_features=jnp.zeros((2, D)),
                      source_logits=jnp.asarray(o, jnp.float32), target_logits=jnp.zeros((2, C)),
                      source_labels=jnp.asarray(y, jnp.int32), progress=jnp.float32(0.3), key=jax.random.key(seed))


def _np_ce(o: np.ndarray, y: np.ndarray) -> float:
    m = o.max(1, keepdims=True)
    return float(np.mean(m[:, 0] + np.log(np.exp(o - m).sum(1)) - o[np.arange(len(y)), y]))


def _np_cdpl(params, z: np.ndarray) -> np.ndarray:
    x = z
    for i in range(3):
        lin = params[f"linear{i}"]
        x = x @ np.asarray(lin["kernel"], np.float64) + np.asarray(lin["bias"], np.float64)
        x = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)  # BatchNorm1d in training mode: biased variance
        x = x * np.asarray(params[f"bn{i}_scale"], np.float64) + np.asarray(params[f"bn{i}_bias"], np.float64)
        if i < 2:
            x = np.maximum(x, 0.0)
    return x


def _np_selfreg(z, p, o, y, perm1, perm2, lam) -> float:
    """DomainBed's update written out: the per-class shuffles given as index arrays, MSELoss = mean."""
    o2, f2 = o[perm1], p[perm1]
    o3, f3 = lam * o[perm1] + (1 - lam) * o[perm2], lam * p[perm1] + (1 - lam) * p[perm2]
    l_ind_logit, l_hdl_logit = np.mean((o - o2) ** 2), np.mean((o - o3) ** 2)
    l_ind_feat, l_hdl_feat = 0.3 * np.mean((z - f2) ** 2), 0.3 * np.mean((z - f3) ** 2)
    c_scale = min(_np_ce(o, y), 1.0)
    return c_scale * (lam * (l_ind_logit + l_ind_feat) + (1 - lam) * (l_hdl_logit + l_hdl_feat))


@pytest.mark.parametrize("margin", [3.0, -1.0])  # CE below 1 (scale = CE) and above 1 (scale = 1)
def test_loss_matches_a_float64_reference_for_the_terms_shuffles_and_lam(margin):
    z, o, y = _case(margin=margin)
    term = get_loss("selfreg").term()
    inputs = _inputs(z, o, y)
    state = term.init(jax.random.key(1), inputs)
    assert state.params == () and set(state.state) == {"linear0", "linear1", "linear2", "bn0_scale", "bn0_bias",
                                                        "bn1_scale", "bn1_bias", "bn2_scale", "bn2_bias"}
    assert state.state["linear0"]["kernel"].shape == (D, 2 * D) and state.state["linear2"]["kernel"].shape == (2 * D, D)
    loss, new_state, metrics = term.apply(state, inputs)
    perm1, perm2, lam = (np.asarray(a) for a in selfreg_draws(inputs.key, inputs.source_labels))
    ref = _np_selfreg(z, _np_cdpl(state.state, z), o, y, perm1, perm2, float(lam))
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert float(metrics["lam"]) == pytest.approx(float(lam)) and float(metrics["scale"]) == pytest.approx(min(_np_ce(o, y), 1))
    assert (float(metrics["scale"]) < 1.0) == (margin > 0)
    assert new_state is state.state  # the frozen projection is carried unchanged


def test_penalty_for_hand_shuffles_and_lam():
    z, o, y = _case(2)
    p = np.random.default_rng(3).normal(size=(N, D))
    perm1 = np.array([2, 4, 5, 6, 1, 0, 3])  # class 0: 0->2->5->0, class 1: 1<->4, class 2: 3<->6
    perm2 = np.array([0, 1, 2, 3, 4, 5, 6])
    got = selfreg_penalty(*(jnp.asarray(a, jnp.float32) for a in (z, p, o)), jnp.asarray(perm1), jnp.asarray(perm2),
                          jnp.float32(0.25))
    expected = _np_selfreg(z, p, o, y, perm1, perm2, 0.25) / min(_np_ce(o, y), 1.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_shuffles_stay_within_class_and_cover_every_permutation():
    y = jnp.asarray([0, 1, 0, 2, 1, 0, 2, 0], jnp.int32)
    perms = jax.vmap(lambda k: within_class_permutation(k, y))(jax.random.split(jax.random.key(0), 400))
    perms = np.asarray(perms)
    assert all(sorted(p) == list(range(8)) for p in perms)
    assert (np.asarray(y)[perms] == np.asarray(y)).all()
    class0 = [0, 2, 5, 7]  # 4! = 24 orders of class 0's block, each about 400 / 24 times
    seen = {tuple(p[class0]) for p in perms}
    assert seen == set(itertools.permutations(class0))


def test_the_ce_scale_carries_no_gradient():
    z, o, y = _case(margin=3.0)
    assert _np_ce(o, y) < 1.0
    term = get_loss("selfreg").term()
    state = term.init(jax.random.key(1), _inputs(z, o, y))
    c = min(_np_ce(o, y), 1.0)
    perm1, perm2, lam = selfreg_draws(jax.random.key(5), jnp.asarray(y, jnp.int32))

    def via_term(logits):
        return term.apply(state, _inputs(z, logits, y))[0]

    def constant_scale(logits):
        from da_framework.losses.selfreg import ProjectionHead
        proj = ProjectionHead(projection_width(D), D).apply({"params": state.state}, jnp.asarray(z, jnp.float32))
        return c * selfreg_penalty(jnp.asarray(z, jnp.float32), proj, logits, perm1, perm2, lam)

    o32 = jnp.asarray(o, jnp.float32)
    np.testing.assert_allclose(np.asarray(jax.grad(via_term)(o32)), np.asarray(jax.grad(constant_scale)(o32)),
                               rtol=1e-5, atol=1e-8)


def test_a_trained_projection_gets_gradients_and_a_frozen_one_none():
    z, o, y = _case()
    term = get_loss("selfreg").term(train_projection=True)
    state = term.init(jax.random.key(1), _inputs(z, o, y))
    assert state.state == () and "linear0" in state.params
    grads = jax.grad(lambda p: term.apply(state._replace(params=p), _inputs(z, o, y))[0])(state.params)
    for name in ("linear0", "linear2"):  # (a Linear's bias right before a batch norm gets ~0: the norm removes it)
        assert np.abs(np.asarray(grads[name]["kernel"])).max() > 1e-4
    assert np.abs(np.asarray(grads["bn2_scale"])).max() > 1e-4


def test_projection_width_rule():
    assert projection_width(2048) == 2048 and projection_width(128) == 256


def test_bad_hyperparameter_and_inputs_are_one_line_errors():
    with pytest.raises(LossError, match="train_projection must be True or False"):
        parse_method("cross_entropy + selfreg(train_projection=1)")
    with pytest.raises(LossError, match="has no hyper-parameter"):
        parse_method("cross_entropy + selfreg(lam=0.5)")
    term = get_loss("selfreg").term()
    z, o, y = _case()
    with pytest.raises(LossError, match="do not match"):
        term.init(jax.random.key(0), _inputs(z, o[:-1], y[:-1]))


@pytest.mark.parametrize("train_projection", [False, True])
def test_selfreg_trains_by_name_over_three_rdigits_environments(train_projection):
    config = ExperimentConfig(
        source="rdigits/15,rdigits/30,rdigits/45", target="rdigits/0",
        method=f"cross_entropy + selfreg(train_projection={train_projection})", steps=3, batch_size=8,
        optimizer="adam", learning_rate=1e-3, lr_schedule="constant", log_every=1, eval_batch_size=256,
        model="mlp", model_kwargs={"hidden": (16,)})
    result = train(config)
    logged = [h for h in result.history if "loss/selfreg" in h]
    assert len(logged) == 3 and all(np.isfinite(h["loss/selfreg"]) and h["loss/selfreg"] > 0 for h in logged)
    lams = [h["loss/selfreg/lam"] for h in logged]
    assert len(set(lams)) == 3  # a new Beta draw every step
    assert result.compile_count == 1
    if train_projection:
        assert "selfreg" in result.state.params["aux"] and "selfreg" not in result.state.term_states
        assert result.state.params["aux"]["selfreg"]["linear0"]["kernel"].shape == (16, 32)
    else:
        assert "selfreg" not in result.state.params["aux"]
        assert result.state.term_states["selfreg"]["linear0"]["kernel"].shape == (16, 32)
