"""Knowledge distillation, soft targets and label smoothing against NumPy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from da_framework.config import ExperimentConfig
from da_framework.losses.classification import cross_entropy
from da_framework.losses.distillation import distillation_loss, smooth_one_hot, soft_cross_entropy
from da_framework.losses.registry import LossError, LossInputs, TermState, get_loss
from da_framework.train import train

TINY = {
    "model": "lenet",
    "model_kwargs": {"channels": (4, 8), "dense": 32},
    "bottleneck_dim": 16,
    "batch_size": 16,
    "log_every": 1,
}


@pytest.fixture
def st():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(6, 4)) * 2).astype(np.float32), (rng.normal(size=(6, 4)) * 2).astype(np.float32)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))


def np_kd(s, t, temp):
    log_qs, log_qt = np_log_softmax(s / temp), np_log_softmax(t / temp)
    kl = [sum(np.exp(a) * (a - b) for a, b in zip(rt, rs)) for rt, rs in zip(log_qt, log_qs)]
    return temp**2 * np.mean(kl)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kd_matches_reference(st, temp):
    s, t = st
    np.testing.assert_allclose(jax.jit(distillation_loss)(s, t, temp), np_kd(s, t, temp), rtol=1e-5, atol=1e-7)


def test_kd_properties(st):
    s, t = st
    np.testing.assert_allclose(distillation_loss(s, s, 3.0), 0.0, atol=1e-6)
    np.testing.assert_allclose(distillation_loss(s, s + 5.0, 3.0), 0.0, atol=1e-6)  # softmax shift invariance
    assert float(distillation_loss(s, t)) > 0
    perm = np.random.default_rng(1).permutation(6)
    np.testing.assert_allclose(distillation_loss(s[perm], t[perm]), distillation_loss(s, t), rtol=1e-6)
    # KL is not symmetric; the student is the second distribution
    assert abs(float(distillation_loss(s, t)) - float(distillation_loss(t, s))) > 1e-4
    # high-temperature limit (Hinton et al. sec. 2.1): with zero-mean logits,
    # T^2 KL -> (1 / 2k) * mean ||z_s - z_t||^2 ... up to O(1/T)
    sc, tc = s - s.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    limit = np.mean(((sc - tc) ** 2).sum(1)) / (2 * 4)
    np.testing.assert_allclose(distillation_loss(sc, tc, 200.0), limit, rtol=2e-2)


def test_kd_gradients(st):
    s, t = st
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda a, b: distillation_loss(a, b, 2.0)), (np.float64(s), np.float64(t)), order=2)


def test_soft_cross_entropy_and_label_smoothing(st):
    s, _ = st
    labels = np.array([0, 3, 1, 1, 2, 0])
    q = smooth_one_hot(jnp.asarray(labels), 4, 0.2)
    ref_q = np.full((6, 4), 0.05) + 0.8 * np.eye(4)[labels]
    np.testing.assert_allclose(q, ref_q, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(q, 1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(soft_cross_entropy(s, q), -np.mean((ref_q * np_log_softmax(s)).sum(1)), rtol=1e-5)
    # agrees with the registered cross_entropy's label smoothing, and with hard labels at eps = 0
    np.testing.assert_allclose(soft_cross_entropy(s, q), cross_entropy(s, labels, 0.2), rtol=1e-5)
    np.testing.assert_allclose(
        soft_cross_entropy(s, smooth_one_hot(jnp.asarray(labels), 4)), cross_entropy(s, labels), rtol=1e-5
    )
    with pytest.raises(LossError, match="smoothing"):
        smooth_one_hot(jnp.asarray(labels), 4, 1.5)


def test_jit_vmap_bfloat16(st):
    s, t = st
    ss, ts = np.stack([s, s * 2, -s]), np.stack([t, t, t * 0.1])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(distillation_loss))(ss, ts), [distillation_loss(a, b) for a, b in zip(ss, ts)], rtol=1e-5
    )
    q = jax.nn.softmax(jnp.asarray(t))
    np.testing.assert_allclose(
        jax.vmap(soft_cross_entropy)(ss, jnp.stack([q, q, q])), [soft_cross_entropy(a, q) for a in ss], rtol=1e-5
    )
    got = distillation_loss(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_kd(s, t, 2.0), rtol=5e-2)


def test_bad_inputs():
    with pytest.raises(LossError, match="same shape"):
        distillation_loss(jnp.zeros((4, 3)), jnp.zeros((4, 5)))
    with pytest.raises(LossError, match="empty batch"):
        distillation_loss(jnp.zeros((0, 3)), jnp.zeros((0, 3)))
    with pytest.raises(LossError, match="2-D"):
        distillation_loss(jnp.zeros((4, 3, 2)), jnp.zeros((4, 3, 2)))
    with pytest.raises(LossError, match="temperature"):
        distillation_loss(jnp.zeros((4, 3)), jnp.zeros((4, 3)), 0.0)
    with pytest.raises(LossError, match="must equal logits shape"):
        soft_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 2)))


def _linear_inputs(params, term_states, xt):
    def apply_model(p, x, train=True):
        del train
        return x @ p["head"]["kernel"] + p["head"]["bias"], x

    logits_t, feats_t = apply_model(params, xt)
    return LossInputs(
        source_features=feats_t,
        target_features=feats_t,
        source_logits=logits_t,
        target_logits=logits_t,
        source_labels=jnp.zeros(len(xt), jnp.int32),
        progress=jnp.zeros(()),
        key=jax.random.key(0),
        target_inputs=xt,
        source_inputs=xt,
        params=params,
        term_states=term_states,
        apply_model=apply_model,
    )


def test_kd_teacher_distils_its_anchor_or_another_terms_state_without_gradient_to_it():
    rng = np.random.default_rng(2)
    xt = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    mk = lambda: {"head": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "bias": jnp.zeros(4)}}
    student, anchor, ema = mk(), mk(), mk()
    spec = get_loss("kd_teacher")
    # init keeps the model it is given (the start of training) as the anchor
    term = spec.term(temperature=2.0)
    assert term.init(jax.random.key(0), _linear_inputs(anchor, None, xt)).state is anchor
    s_logits = xt @ student["head"]["kernel"]
    value, new_state, _ = term.apply(TermState(state=anchor), _linear_inputs(student, {"kd_teacher": anchor}, xt))
    np.testing.assert_allclose(value, distillation_loss(s_logits, xt @ anchor["head"]["kernel"]), rtol=1e-5)
    assert new_state is anchor
    # teacher=<key>: another term's state (an EMA teacher) is the teacher
    ema_term = spec.term(teacher="mean_teacher")
    value = ema_term.apply(TermState(state=anchor), _linear_inputs(student, {"mean_teacher": ema}, xt))[0]
    np.testing.assert_allclose(value, distillation_loss(s_logits, xt @ ema["head"]["kernel"]), rtol=1e-5)
    g = jax.grad(lambda a: term.apply(TermState(state=a), _linear_inputs(student, {}, xt))[0])(anchor)
    assert float(jnp.abs(g["head"]["kernel"]).sum()) == 0.0
    with pytest.raises(LossError, match="no term keyed 'mean_teacher'"):
        ema_term.apply(TermState(state=anchor), _linear_inputs(student, {}, xt))


@pytest.mark.slow  # a real train() run: ~3 XLA compilations
def test_end_to_end_kd_teacher_train():
    """Teacher = the initial model: the first step's KD loss is 0, later ones positive and finite."""
    r = train(ExperimentConfig(method="cross_entropy + 1.0*kd_teacher", steps=3, **TINY))
    kd = [h["loss/kd_teacher"] for h in r.history if "loss/kd_teacher" in h]
    assert len(kd) == 3 and np.all(np.isfinite(kd))
    assert abs(kd[0]) < 1e-6 and kd[-1] > 0
