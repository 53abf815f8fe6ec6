"""SHOT (source-free): the pseudo-label clustering against SHOT's NumPy/SciPy recipe in float64,
one source-training update and one source-free update of a linear encoder + linear head against
NumPy float64 derivations, the frozen head and the unread source batch, the refresh schedule, the
``index`` batch field, a run by name and a killed-and-resumed run."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.spatial.distance import cdist

from da_framework.config import ExperimentConfig
from da_framework.data.domain import ArraySource, MappedSource, batch_iterator
from da_framework.losses.registry import LossError
from da_framework.losses.shot import cluster_pseudo_labels
from da_framework.methods.shot import make_shot_step
from da_framework.models.classifier import Classifier
from da_framework.train import train
from da_framework.train.loop import params_checksum
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state
from da_framework.train.trainers import get_trainer

B, WIDTH, C, LR, EPS = 6, 3, 3, 0.1, 0.1


class LinearEncoder(nn.Module):
    """Flatten, then one Dense layer."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dense(WIDTH)(jnp.reshape(x, (x.shape[0], -1)))


MODEL = Classifier(LinearEncoder(), C)


def _shot_labels_numpy(feats, probs, rounds=1):
    """SHOT's digit/uda_digit.py obtain_label, re-derived in float64 with SciPy's cosine distance."""
    f = np.concatenate([feats, np.ones((len(feats), 1))], 1)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    aff = probs
    for r in range(rounds + 1):
        c = aff.T @ f / (1e-8 + aff.sum(0)[:, None])
        d = cdist(f, c, "cosine")
        d[:, aff.sum(0) == 0] = np.inf  # an empty cluster has no centroid
        labels = d.argmin(1)
        aff = np.eye(probs.shape[1])[labels]
    return labels


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_cluster_pseudo_labels_match_shots_recipe(rounds):
    rng = np.random.default_rng(rounds)
    centres = rng.normal(size=(4, 5)) * 3
    truth = rng.integers(0, 4, 200)
    feats = centres[truth] + rng.normal(size=(200, 5))
    logits = rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[truth] * (rng.random(200) < 0.6)[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = np.asarray(cluster_pseudo_labels(jnp.asarray(feats, jnp.float32), jnp.asarray(probs, jnp.float32), rounds))
    want = _shot_labels_numpy(feats, probs, rounds)
    assert np.mean(got == want) >= 0.995  # float32 vs float64: a near-tie may flip
    if rounds:  # clustering moved labels away from the argmax predictions
        assert np.mean(want != probs.argmax(1)) > 0.05


def test_cluster_pseudo_labels_hand_case_with_an_empty_cluster():
    # Two tight groups, predictions spread over three classes: the hard round leaves class 2 empty.
    feats = np.array([[5.0, 0.0], [4.0, 0.2], [0.0, 5.0], [0.2, 4.0]])
    probs = np.array([[0.5, 0.1, 0.4], [0.6, 0.1, 0.3], [0.1, 0.5, 0.4], [0.1, 0.6, 0.3]])
    got = np.asarray(cluster_pseudo_labels(jnp.asarray(feats), jnp.asarray(probs), rounds=2))
    assert got.tolist() == [0, 0, 1, 1] == _shot_labels_numpy(feats, probs, 2).tolist()
    with pytest.raises(LossError, match="same n > 0"):
        cluster_pseudo_labels(jnp.zeros((3, 2)), jnp.zeros((4, 3)))


def _setup(spec: str, total: int = 4, n_target: int = B):
    rng = np.random.default_rng(0)
    src = {"image": jnp.asarray(rng.normal(size=(B, 2, 2, 1)), jnp.float32),
           "label": jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)}
    tgt = {"image": jnp.asarray(rng.normal(size=(B, 2, 2, 1)) + 1.0, jnp.float32),
           "index": jnp.asarray([3, 0, 5, 1, 2, 4], jnp.int32)}
    method = parse_method(spec)
    step = make_shot_step(MODEL, method, optax.sgd(LR), total)
    state = init_train_state(jax.random.key(1), MODEL, method, optax.sgd(LR), src["image"], tgt["image"],
                             src["label"])
    return step.prepare(state, n_target), step, src, tgt


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _close(got, want):
    for g, w in zip(jax.tree.leaves(_f64(got)), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


def _forward(p, x):
    enc, head = p["backbone"]["Dense_0"], p["head"]
    x = x.reshape(len(x), -1)
    f = x @ enc["kernel"] + enc["bias"]
    z = f @ head["kernel"] + head["bias"]
    e = np.exp(z - z.max(1, keepdims=True))
    return x, f, z, e / e.sum(1, keepdims=True)


def _sgd_encoder(enc, x, g_f):
    return {"kernel": enc["kernel"] - LR * x.T @ g_f, "bias": enc["bias"] - LR * g_f.sum(0)}


def test_source_training_update_is_label_smoothed_cross_entropy_in_numpy():
    state, step, src, tgt = _setup("cross_entropy(label_smoothing=0.1) + shot(pretrain_steps=1)")
    new, metrics = jax.jit(step)(state, src, tgt, jax.random.key(0))
    p = _f64(state.params["model"])
    x, f, _, prob = _forward(p, np.asarray(src["image"], np.float64))
    soft = (1 - EPS) * np.eye(C)[np.asarray(src["label"])] + EPS / C
    dz = (prob - soft) / B
    want = {"backbone": {"Dense_0": _sgd_encoder(p["backbone"]["Dense_0"], x, dz @ p["head"]["kernel"].T)},
            "head": {"kernel": p["head"]["kernel"] - LR * f.T @ dz, "bias": p["head"]["bias"] - LR * dz.sum(0)}}
    _close(new.params["model"], want)
    np.testing.assert_allclose(float(metrics["loss"]), -np.mean(np.sum(soft * np.log(prob), 1)), rtol=1e-5)
    assert float(metrics["loss/shot/phase"]) == 1.0 and float(metrics["loss/shot"]) == 0.0


@pytest.mark.parametrize("cls_par,ent_par,div", [(0.3, 1.0, 1.0), (0.0, 1.0, 1.0), (0.5, 0.7, 0.0)])
def test_source_free_update_matches_numpy_and_never_reads_the_source(cls_par, ent_par, div):
    spec = f"cross_entropy + shot(pretrain_steps=1, cls_par={cls_par}, ent_par={ent_par}, diversity_weight={div})"
    state, step, src, tgt = _setup(spec)
    rng = np.random.default_rng(5)
    outputs = {"logits": rng.normal(size=(B, C)), "features": rng.normal(size=(B, 4)), "label": np.arange(B) % C}
    state = step.refresh(state.replace(step=jnp.asarray(1, state.step.dtype)), outputs)
    table = np.asarray(state.term_states["shot"]["labels"])
    probs = np.exp(outputs["logits"]) / np.exp(outputs["logits"]).sum(1, keepdims=True)
    assert table.tolist() == _shot_labels_numpy(outputs["features"], probs).tolist()
    assert float(state.term_states["shot"]["label_accuracy"]) == pytest.approx(np.mean(table == outputs["label"]))
    jstep = jax.jit(step)
    new, metrics = jstep(state, src, tgt, jax.random.key(0))
    p = _f64(state.params["model"])
    x, _, _, prob = _forward(p, np.asarray(tgt["image"], np.float64))
    yhat = table[np.asarray(tgt["index"])]
    h = -np.sum(prob * np.log(prob), 1)
    pbar = prob.mean(0)
    d_ent = -prob * (np.log(prob) + h[:, None]) / B
    g = -(np.log(pbar) + 1.0)
    d_div = prob * (g[None, :] - (prob * g[None, :]).sum(1, keepdims=True)) / B  # dH(pbar)/dz
    d_ce = (prob - np.eye(C)[yhat]) / B
    dz = ent_par * (d_ent - div * d_div) + cls_par * d_ce
    want_enc = _sgd_encoder(p["backbone"]["Dense_0"], x, dz @ p["head"]["kernel"].T)
    _close(new.params["model"]["backbone"]["Dense_0"], want_enc)
    assert _same(new.params["model"]["head"], state.params["model"]["head"])  # the hypothesis is frozen
    loss = ent_par * (h.mean() + div * np.sum(pbar * np.log(pbar))) + cls_par * np.mean(-np.log(prob[range(B), yhat]))
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5, atol=1e-6)
    assert float(metrics["loss/shot/phase"]) == 2.0
    other_source = {"image": src["image"] * 7.0 + 3.0, "label": (src["label"] + 1) % C}
    again, _ = jstep(state, other_source, tgt, jax.random.key(0))
    assert _same(again.params, new.params)  # source-free: the source batch is not read


def test_refresh_schedule_is_one_target_epoch_after_the_source_phase():
    _, step, _, _ = _setup("cross_entropy + shot(pretrain_steps=3)", total=50)
    assert [i for i in range(30) if step.due(i, 20, 8)] == [3, 6, 9, 12, 15, 18, 21, 24, 27]  # ceil(20/8) = 3
    _, step, _, _ = _setup("cross_entropy + shot(pretrain_steps=2, interval=10)", total=50)
    assert [i for i in range(30) if step.due(i, 20, 8)] == [2, 12, 22]


@pytest.mark.parametrize("mapped", [False, True])
def test_index_field_is_each_examples_position(mapped):
    x = np.arange(10, dtype=np.float32).reshape(10, 1) * 3.0
    source = ArraySource({"image": x})
    if mapped:  # the grain path
        source = MappedSource(source, lambda r: {"image": r["image"] + 1.0})
    seen = []
    for batch in batch_iterator(source, 4, seed=3, repeat=False, drop_remainder=False, fields=("image", "index"),
                                read_threads=0):
        assert batch["index"].dtype == np.int32
        np.testing.assert_array_equal(batch["image"][:, 0], x[batch["index"], 0] + (1.0 if mapped else 0.0))
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(10)) and seen != list(range(10))  # every example once, shuffled


@pytest.mark.parametrize("spec,total,message", [
    ("cross_entropy + shot(pretrain_steps=0)", 10, "pretrain_steps must be an integer >= 1, got 0"),
    ("cross_entropy + shot(pretrain_steps=10)", 10, "pretrain_steps must be < steps"),
    ("cross_entropy + shot(cls_par=-0.1)", 9999, "cls_par must be a finite number >= 0"),
    ("cross_entropy + shot(interval=-1)", 9999, "interval must be an integer >= 0"),
    ("cross_entropy + 0.5*shot", 9999, "the term takes weight 1"),
    ("1.0*shot", 9999, "write the method as 'cross_entropy \\+ shot'"),
])
def test_bad_setups_fail_in_one_line(spec, total, message):
    with pytest.raises(LossError, match=message) as err:
        make_shot_step(MODEL, parse_method(spec), optax.sgd(LR), total)
    assert "\n" not in str(err.value)


TINY = {"source": "digits/source", "target": "digits/rotate", "model": "lenet",
        "model_kwargs": {"channels": (4, 8), "dense": 16}, "bottleneck_dim": None, "batch_size": 16, "log_every": 1}


def test_runs_by_name_compiling_once_with_refreshes_at_their_steps():
    assert get_trainer("auto", parse_method("shot")) is make_shot_step
    result = train(ExperimentConfig(method="cross_entropy + shot(pretrain_steps=3, interval=2)", steps=7, **TINY))
    assert result.compile_count == 1
    logged = [h for h in result.history if "loss" in h]
    assert [h["loss/shot/phase"] for h in logged] == [1, 1, 1, 2, 2, 2, 2]
    acc = [h["loss/shot/pseudo_label_accuracy"] for h in logged]
    assert acc[:3] == [0.0, 0.0, 0.0] and acc[3] > 0.0 and acc[3] == acc[4] and acc[5] == acc[6]
    n_target = len(result.state.term_states["shot"]["labels"])
    assert n_target > 100 and 0 <= int(result.state.term_states["shot"]["labels"].max()) < 10


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    base = ExperimentConfig(method="cross_entropy + shot(pretrain_steps=2, interval=3)", steps=8, **TINY)
    full = train(base)
    cfg = base.replace(checkpoint_every=4, checkpoint_dir=str(tmp_path / "ckpt"))

    class Killed(RuntimeError):
        pass

    def die(step, metrics):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, on_log=die)
    resumed = train(cfg)
    assert resumed.history == full.history
    assert params_checksum(resumed.state) == params_checksum(full.state)
    assert _same(resumed.state.term_states["shot"], full.state.term_states["shot"])


def test_vmapped_seeds_refuse_a_target_pass_trainer_in_one_line():
    from da_framework.bench.vmap_seeds import train_seeds
    from da_framework.config import ConfigError

    with pytest.raises(ConfigError, match="run its seeds separately") as err:
        train_seeds(ExperimentConfig(method="shot", steps=3000, **TINY), [0, 1])
    assert "\n" not in str(err.value)


def test_phase_schedule_is_shots_lr_scheduler_in_each_phase():
    """phase_schedule=True: the update of step s is the plain SGD update times (1 + 10 i / T)^-0.75,
    i = 1..T within its phase (SHOT's lr_scheduler), here over phases of 3 and 2 steps."""
    spec = "cross_entropy(label_smoothing=0.1) + shot(pretrain_steps=3{})"
    state, plain, src, tgt = _setup(spec.format(""), total=5)
    _, phased, _, _ = _setup(spec.format(", phase_schedule=True"), total=5)
    want = [(1 + 10 * i / t) ** -0.75 for i, t in ((1, 3), (2, 3), (3, 3), (1, 2), (2, 2))]
    np.testing.assert_allclose([float(phased.phase_factor(jnp.int32(s))) for s in range(5)], want, rtol=1e-6)
    s = state
    for k in range(5):  # from the same state, the two updates differ by exactly that factor
        a, _ = jax.jit(plain)(s, src, tgt, jax.random.key(k))
        b, _ = jax.jit(phased)(s, src, tgt, jax.random.key(k))
        for x, y, z in zip(jax.tree.leaves(_f64(s.params)), jax.tree.leaves(_f64(a.params)), jax.tree.leaves(_f64(b.params))):
            np.testing.assert_allclose(z - x, want[k] * (y - x), rtol=1e-4, atol=1e-7)
        s = a


def test_phase_schedule_needs_a_constant_run_schedule():
    from da_framework.config import ExperimentConfig
    from da_framework.train.loop import build

    config = ExperimentConfig(**TINY, method="cross_entropy + shot(pretrain_steps=2, phase_schedule=True)", steps=4)
    with pytest.raises(LossError, match="set lr_schedule=constant, got 'inv'"):
        build(config.replace(lr_schedule="inv"))
    assert build(config.replace(lr_schedule="constant")).step.hp.phase_schedule
