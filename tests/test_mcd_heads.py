"""MCD with tllib's deep classifier heads (DeepHead): the head against NumPy float64, the default
Classifier unchanged, the three-step trainer's freezing, BatchNorm passes and keys, and a train() run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ExperimentConfig
from da_framework.data import get_domain
from da_framework.errors import UserError
from da_framework.losses.mcd import mcd_term
from da_framework.losses.registry import LossError
from da_framework.methods.mcd import make_mcd_step
from da_framework.models.classifier import Bottleneck, Classifier, DeepHead
from da_framework.models.lenet import LeNet, lenet_tllib
from da_framework.models.mlp import MLP
from da_framework.models.registry import make_model
from da_framework.train import train
from da_framework.train.method import parse_method
from da_framework.train.state import init_train_state

EPS = 1e-5
HIDDEN = (6, 5)


def _f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _np_head(params, x, n_hidden, stats=None, dropped=None, p=0.0):
    """tllib's ImageClassifierHead in float64: [Dropout -> Linear -> BN -> ReLU] * n_hidden -> Linear.

    ``stats``: per layer (mean, var) for eval mode, or None for the batch's (biased) statistics.
    ``dropped``: per layer the captured dropout output, checked to be 0 or input / (1 - p), whose
    mask is then applied in float64.  Returns (logits, per-layer batch (mean, unbiased var)).
    """
    h, batch = _f64(x), []
    for i in range(n_hidden):
        if dropped is not None:
            d = _f64(dropped[i])
            keep = d != 0
            assert 0 < keep.mean() < 1
            np.testing.assert_allclose(d[keep], h[keep] / (1 - p), rtol=1e-5, atol=1e-6)
            h = np.where(keep, h / (1 - p), 0.0)
        h = h @ _f64(params[f"Dense_{i}"]["kernel"]) + _f64(params[f"Dense_{i}"]["bias"])
        mean, var = (h.mean(0), h.var(0)) if stats is None else (_f64(stats[i][0]), _f64(stats[i][1]))
        batch.append((h.mean(0), h.var(0, ddof=1)))
        bn = params[f"BatchNorm_{i}"]
        h = np.maximum((h - mean) / np.sqrt(var + EPS) * _f64(bn["scale"]) + _f64(bn["bias"]), 0.0)
    last = params[f"Dense_{n_hidden}"]
    return h @ _f64(last["kernel"]) + _f64(last["bias"]), batch


def _perturbed(tree, seed):
    """The tree with every leaf moved by N(0, 0.3) noise (non-trivial BN scales and biases)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + rng.normal(0, 0.3, a.shape), jnp.float32), tree)


def test_deep_head_eval_mode_matches_numpy():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
    head = DeepHead(3, HIDDEN, dropout=0.5)
    variables = head.init(jax.random.key(0), x)
    params = _perturbed(variables["params"], 1)
    stats = {f"BatchNorm_{i}": {"mean": jnp.asarray(rng.normal(size=w), jnp.float32),
                                "var": jnp.asarray(rng.uniform(0.5, 2.0, size=w), jnp.float32)}
             for i, w in enumerate(HIDDEN)}
    out = head.apply({"params": params, "batch_stats": stats}, x, train=False)
    ref, _ = _np_head(params, x, 2, stats=[(stats[f"BatchNorm_{i}"]["mean"], stats[f"BatchNorm_{i}"]["var"])
                                           for i in range(2)])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(variables["batch_stats"]) == jax.tree.structure(stats)
    assert sorted(params) == ["BatchNorm_0", "BatchNorm_1", "Dense_0", "Dense_1", "Dense_2"]


def test_deep_head_train_mode_batch_stats_and_dropout_match_numpy():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
    p = 0.5
    head = DeepHead(3, HIDDEN, dropout=p)
    variables = head.init(jax.random.key(0), x)
    params = _perturbed(variables["params"], 2)
    out, new = head.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                          rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats", "intermediates"],
                          capture_intermediates=True)
    inter = new["intermediates"]
    dropped = [inter[f"Dropout_{i}"]["__call__"][0] for i in range(2)]
    ref, batch = _np_head(params, x, 2, dropped=dropped, p=p)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    for i, (mean, var) in enumerate(batch):  # torch's update from mean 0, var 1, momentum 0.1
        st = new["batch_stats"][f"BatchNorm_{i}"]
        np.testing.assert_allclose(np.asarray(st["mean"]), 0.1 * mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(st["var"]), 0.9 + 0.1 * var, rtol=1e-4, atol=1e-5)
    assert "Dropout_2" not in inter  # no dropout before the output layer
    # without dropout the train-mode head is the batch-statistics formula alone
    head0 = DeepHead(3, HIDDEN, dropout=0.0)
    out0, _ = head0.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                          mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out0), _np_head(params, x, 2)[0], rtol=1e-5, atol=1e-5)


class _OldClassifier(nn.Module):
    """The Classifier as it was before deep heads existed (the reference for the default)."""

    backbone: nn.Module
    num_classes: int
    bottleneck_dim: int | None = None
    bottleneck_norm: str = "layer"

    def setup(self) -> None:
        self.bottleneck = Bottleneck(self.bottleneck_dim, norm=self.bottleneck_norm) if self.bottleneck_dim else None
        self.head = nn.Dense(self.num_classes)

    def __call__(self, x, train=False):
        f = self.backbone(x, train=train)
        if self.bottleneck is not None:
            f = self.bottleneck(f, train=train)
        return self.head(f), f


def _bitwise(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("backbone,bdim,norm", [
    (LeNet(channels=(4, 8), dense=16), None, "layer"),
    (lenet_tllib(), 16, "batch"),
    (LeNet(channels=(4, 8), dense=16), 12, "layer"),
])
def test_default_classifier_unchanged(backbone, bdim, norm):
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(6, 28, 28, 1)), jnp.float32)
    new, old = (cls(backbone=backbone, num_classes=10, bottleneck_dim=bdim, bottleneck_norm=norm)
                for cls in (Classifier, _OldClassifier))
    v_new, v_old = new.init(jax.random.key(0), x), old.init(jax.random.key(0), x)
    assert _bitwise(v_new, v_old)
    assert _bitwise(new.apply(v_new, x), old.apply(v_old, x))
    mutable = [k for k in v_new if k != "params"]
    kw = {"train": True, "rngs": {"dropout": jax.random.key(5)}, "mutable": mutable}
    assert _bitwise(new.apply(v_new, x, **kw), old.apply(v_old, x, **kw))


def test_deep_classifier_head_name_stats_and_errors():
    x = jnp.zeros((4, 28, 28, 1))
    model = Classifier(LeNet(channels=(4, 8), dense=16), 10, head_hidden=(8, 8))
    v = model.init(jax.random.key(0), x)
    assert sorted(v["params"]["head"]) == ["BatchNorm_0", "BatchNorm_1", "Dense_0", "Dense_1", "Dense_2"]
    assert sorted(v["batch_stats"]["head"]) == ["BatchNorm_0", "BatchNorm_1"]
    assert v["params"]["head"]["Dense_0"]["kernel"].shape == (16, 8)
    no_norm = Classifier(LeNet(channels=(4, 8), dense=16), 10, head_hidden=(8,), head_norm="none")
    assert "batch_stats" not in no_norm.init(jax.random.key(0), x)
    for kw, msg in [({"head_norm": "layer"}, "unknown head_norm 'layer'; valid: batch, none"),
                    ({"head_dropout": 1.0}, "head_dropout must be in"), ({"head_hidden": (0,)}, "widths must be >= 1")]:
        bad = Classifier(LeNet(channels=(4, 8), dense=16), 10, **{"head_hidden": (8,), **kw})
        with pytest.raises(UserError, match=msg):
            bad.init(jax.random.key(0), x)


def test_mcd_head_hparam_errors():
    with pytest.raises(LossError, match=r"^mcd: head_hidden widths must be >= 1"):
        mcd_term(head_hidden=(0,))
    with pytest.raises(LossError, match=r"^mcd: head_hidden must be a tuple"):
        mcd_term(head_hidden=1024)
    with pytest.raises(LossError, match=r"^mcd: unknown head_norm 'layer'"):
        mcd_term(head_hidden=(8,), head_norm="layer")
    deep = Classifier(MLP(hidden=(8,)), 3, head_hidden=HIDDEN)
    for spec, model in [("cross_entropy + mcd", deep), (f"cross_entropy + mcd(head_hidden={HIDDEN})", deep.clone(head_dropout=0.0)),
                        (f"cross_entropy + mcd(head_hidden={HIDDEN})", Classifier(MLP(hidden=(8,)), 3))]:
        with pytest.raises(LossError, match=r"^mcd: F2 \(the term's head_hidden=.*must match the model's head F1"):
            make_mcd_step(model, parse_method(spec), optax.sgd(0.1), 10)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)).astype(np.float32))
    xt = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)).astype(np.float32) + 0.5)
    return xs, xt, jnp.asarray([0, 1, 2, 0, 1, 2])


def _deep(dropout):
    model = Classifier(MLP(hidden=(8,)), 3, head_hidden=HIDDEN, head_dropout=dropout)
    method = parse_method(f"cross_entropy + mcd(num_k=2, head_hidden={HIDDEN}, head_dropout={dropout})")
    return model, method


def test_deep_mcd_step_freezes_the_right_parts(batch):
    # run the step eagerly with an optimiser that records the parameters of every sub-step update
    xs, xt, ys = batch
    model, method = _deep(0.5)
    inner, seen = optax.sgd(0.1, 0.9), []

    def update(g, s, p=None):
        seen.append((p, s))
        return inner.update(g, s, p)

    tx = optax.GradientTransformation(inner.init, update)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    new, _ = make_mcd_step(model, method, tx, total_steps=10)(state, {"image": xs, "label": ys}, {"image": xt},
                                                             jax.random.key(1))
    assert len(seen) == 4  # A, B, C, C
    params = [p for p, _ in seen] + [new.params]
    slots = [s[0].trace for _, s in seen] + [new.opt_state[0].trace]
    g = lambda t: {k: v for k, v in t["model"].items() if k != "head"}
    f = lambda t: (t["model"]["head"], t["aux"]["mcd"])
    assert not _bitwise(g(params[1]), g(params[0])) and not _bitwise(f(params[1]), f(params[0]))  # A: all
    assert _bitwise(g(params[2]), g(params[1])) and _bitwise(g(slots[2]), g(slots[1]))  # B: G frozen
    assert not _bitwise(f(params[2])[0], f(params[1])[0]) and not _bitwise(f(params[2])[1], f(params[1])[1])
    for i in (3, 4):  # C: F1, F2 frozen with their momentum, G moves
        assert _bitwise(f(params[i]), f(params[2])) and _bitwise(f(slots[i]), f(slots[2]))
        assert not _bitwise(g(params[i]), g(params[i - 1]))


def test_deep_mcd_step_batchnorm_passes_match_numpy(batch):
    # lr 0: every pass sees the initial parameters; no dropout, so each pass is the same joint batch
    xs, xt, ys = batch
    model, method = _deep(0.0)
    tx = optax.sgd(0.0)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    new, m = jax.jit(make_mcd_step(model, method, tx, total_steps=10))(
        state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(1))
    joint = jnp.concatenate([xs, xt])
    feats = model.apply({"params": state.params["model"], **state.model_state}, joint, method=Classifier.features)
    l1, batch1 = _np_head(state.params["model"]["head"], feats, 2)
    l2, _ = _np_head(state.params["aux"]["mcd"], feats, 2)  # F2 on the joint features, batch statistics
    n = 2 + 2  # running statistics updated by the passes of A, B and both C repeats, all on the joint batch
    for i, (mean, var) in enumerate(batch1):
        st = new.model_state["batch_stats"]["head"][f"BatchNorm_{i}"]
        np.testing.assert_allclose(np.asarray(st["mean"]), (1 - 0.9**n) * mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(st["var"]), 0.9**n + (1 - 0.9**n) * var, rtol=1e-4, atol=1e-6)

    def np_ce(z, y):
        z = z - z.max(1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])

    def np_sm(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    y = np.asarray(ys)
    np.testing.assert_allclose(m["loss/cross_entropy"], np_ce(l1[:6], y), rtol=1e-5)
    np.testing.assert_allclose(m["loss/mcd"], np_ce(l2[:6], y), rtol=1e-5)
    disc = np.mean(np.abs(np_sm(l1[6:]) - np_sm(l2[6:])))
    for k in ("loss/mcd_discrepancy_b", "loss/mcd_discrepancy_c", "loss/mcd/discrepancy"):
        np.testing.assert_allclose(m[k], disc, rtol=1e-4, err_msg=k)


def test_deep_mcd_step_dropout_keys(batch):
    xs, xt, ys = batch
    model, method = _deep(0.5)
    tx = optax.sgd(0.1, 0.9)
    state = init_train_state(jax.random.key(0), model, method, tx, xs, xt, ys)
    step = jax.jit(make_mcd_step(model, method, tx, total_steps=10))
    run = lambda k: step(state, {"image": xs, "label": ys}, {"image": xt}, jax.random.key(k))
    a, b, c = run(1), run(1), run(2)
    assert _bitwise(a, b)  # the step's key alone sets every dropout mask
    assert not _bitwise(a[0].params["aux"], c[0].params["aux"]) and a[1]["loss/mcd"] != c[1]["loss/mcd"]


@pytest.mark.slow  # a real train() run on the embedded digits
def test_train_by_name_with_deep_heads():
    kwargs = {"channels": (4, 8), "dense": 16, "head_hidden": (32, 32), "head_dropout": 0.5}
    cfg = ExperimentConfig(method="cross_entropy + mcd(head_hidden=(32, 32), head_dropout=0.5)", source="digits/source",
                           target="digits/rotate", steps=4, model="lenet", model_kwargs=kwargs, bottleneck_dim=None,
                           batch_size=16, log_every=2)
    r = train(cfg)
    assert r.compile_count == 1
    assert [h["step"] for h in r.history if "loss" in h] == [2, 4]
    assert r.state.params["aux"]["mcd"]["Dense_1"]["kernel"].shape == (32, 32)
    stats = r.state.model_state["batch_stats"]["head"]["BatchNorm_0"]
    assert not np.array_equal(np.asarray(stats["mean"]), np.zeros(32))
    # the reported accuracy is F1's (the model's deep head, running statistics, no dropout)
    test = get_domain(cfg.target).split("test").arrays
    model = make_model("lenet", 10, None, **kwargs)
    variables = {"params": r.state.params["model"], **r.state.model_state}
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(test["image"]))
    expected = np.mean(np.argmax(np.asarray(logits), -1) == test["label"])
    assert r.metrics["target_test_accuracy"] == pytest.approx(expected, abs=1e-12)
