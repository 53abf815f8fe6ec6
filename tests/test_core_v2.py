"""Core v2, step 1: N domains per step, one loss used twice, methods as values, tuple hyper-parameters."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typer.testing import CliRunner

from da_framework.bench.sweep import method_at, validate_sweep
from da_framework.cli import app
from da_framework.config import ConfigError, ExperimentConfig
from da_framework.losses.moments import moment_distance, multi_source_moment_distance
from da_framework.losses.registry import LossError, LossInputs, register_loss
from da_framework.models.registry import make_model
from da_framework.train.loop import train
from da_framework.train.method import LossTerm, Method, parse_method
from da_framework.train.state import init_train_state
from da_framework.train.step import make_train_step

runner = CliRunner()


def _md_np(a: np.ndarray, b: np.ndarray, order: int) -> float:
    """Sum over k of ||E(a^k) - E(b^k)||_2 in float64."""
    return sum(np.linalg.norm((a**k).mean(0) - (b**k).mean(0)) for k in range(1, order + 1))


def _m3sda_np(sources: list[np.ndarray], target: np.ndarray, order: int = 2) -> float:
    """Peng et al. 2019, eq. 1, written out independently."""
    to_t = np.mean([_md_np(s, target, order) for s in sources])
    pairs = list(itertools.combinations(sources, 2))
    return to_t + (np.mean([_md_np(a, b, order) for a, b in pairs]) if pairs else 0.0)


def test_m3sda_matches_a_float64_reference_over_three_sources():
    rng = np.random.default_rng(0)
    sources = [rng.normal(i, 1.0 + i, (7 + i, 5)) for i in range(3)]
    target = rng.normal(0.5, 2.0, (9, 5))
    got = multi_source_moment_distance([jnp.asarray(s) for s in sources], jnp.asarray(target))
    np.testing.assert_allclose(float(got), _m3sda_np(sources, target), rtol=1e-5)
    # one source: the two-domain moment distance; identical sources: no pair term
    one = multi_source_moment_distance([jnp.asarray(sources[0])], jnp.asarray(target))
    np.testing.assert_allclose(float(one), float(moment_distance(jnp.asarray(sources[0]), jnp.asarray(target))))
    same = multi_source_moment_distance([jnp.asarray(sources[0])] * 3, jnp.asarray(target))
    np.testing.assert_allclose(float(same), float(one), rtol=1e-6)


def test_one_step_sees_three_labelled_domains_and_one_unlabelled_as_views():
    """A step over 3 sources + 1 target: each term gets per-domain views with the right slices,
    labels and ids, and the m3sda metric equals the float64 reference on those domains' features."""
    seen = {}

    @register_loss("_test_views", description="records views", reference="test", overwrite=True)
    def _views(inputs: LossInputs) -> jax.Array:
        seen["sources"] = [(v.domain_id, v.labelled, v.features.shape, v.labels is not None) for v in inputs.sources()]
        seen["targets"] = [(v.domain_id, v.labelled, v.features.shape, v.labels) for v in inputs.targets()]
        return jnp.zeros(())

    n, d = 4, 6
    model = make_model("mlp", 3, None, hidden=(8,))  # no normalisation: features are per example
    method = parse_method("cross_entropy + 1.0*m3sda + 1.0*_test_views")
    tx = optax.sgd(0.0)
    rng = np.random.default_rng(1)
    xs = [rng.normal(i, 1.0, (n, d)).astype(np.float32) for i in range(3)]
    ys = [np.full(n, i, np.int32) for i in range(3)]
    xt = rng.normal(2.0, 1.0, (n, d)).astype(np.float32)
    source_batch = {"image": jnp.concatenate(xs), "label": jnp.concatenate(ys)}
    target_batch = {"image": jnp.asarray(xt)}
    state = init_train_state(jax.random.key(0), model, method, tx, source_batch["image"], target_batch["image"],
                             source_batch["label"])
    step = make_train_step(model, method, tx, 10, num_sources=3, num_targets=1)
    _, metrics = jax.jit(step)(state, source_batch, target_batch, jax.random.key(1))

    assert seen["sources"] == [(0, True, (n, 8), True), (1, True, (n, 8), True), (2, True, (n, 8), True)]
    assert [(i, lab, shape) for i, lab, shape, _ in seen["targets"]] == [(3, False, (n, 8))]
    assert seen["targets"][0][3] is None  # target labels are never given
    variables = {"params": state.params["model"], **state.model_state}
    feats = [np.asarray(model.apply(variables, jnp.asarray(x), train=False)[1], np.float64) for x in xs + [xt]]
    np.testing.assert_allclose(float(metrics["loss/m3sda"]), _m3sda_np(feats[:3], feats[3]), rtol=1e-4)


def test_train_with_three_sources_and_two_targets_reports_each_domain():
    config = ExperimentConfig(source=["digits/source", "digits/blur", "digits/noise"], target="digits/rotate,digits/invert",
                              method="m3sda", steps=2, batch_size=8, log_every=1, eval_batch_size=256, model="mlp",
                              model_kwargs={"hidden": (16,)})
    assert config.source == "digits/source,digits/blur,digits/noise"
    assert config.source_names == ("digits/source", "digits/blur", "digits/noise")
    m = train(config).metrics
    per_target = [m["target_test_accuracy/digits/rotate"], m["target_test_accuracy/digits/invert"]]
    assert m["target_test_accuracy"] == pytest.approx(np.mean(per_target))
    per_source = [m[f"source_val_accuracy/digits/{n}"] for n in ("source", "blur", "noise")]
    assert m["source_val_accuracy"] == pytest.approx(np.mean(per_source))
    with pytest.raises(ConfigError, match="distinct names"):
        ExperimentConfig(source="digits/source,digits/source")


def test_one_loss_twice_with_keys_sums_both_and_logs_both():
    method = parse_method("cross_entropy + 0.3*mmd as mmd_a + 0.7*mmd(estimator=unbiased) as mmd_b")
    assert [t.key for t in method.terms] == ["cross_entropy", "mmd_a", "mmd_b"]
    assert parse_method(method.spec()).terms == method.terms  # the spelling round-trips exactly
    rng = np.random.default_rng(2)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    inputs = LossInputs(f(6, 4) + 1.0, f(6, 4), f(6, 3), f(6, 3), jnp.arange(6) % 3, jnp.zeros(()), jax.random.key(0))
    total, parts, _, _ = method.loss({}, {}, inputs)
    assert set(parts) == {"cross_entropy", "mmd_a", "mmd_b"}
    assert float(parts["mmd_a"]) != pytest.approx(float(parts["mmd_b"]))  # biased vs unbiased estimator
    expected = parts["cross_entropy"] + 0.3 * parts["mmd_a"] + 0.7 * parts["mmd_b"]
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)
    with pytest.raises(LossError, match="as mmd_a"):
        parse_method("cross_entropy + mmd + 0.5*mmd")


def test_a_method_value_is_a_config_value_and_sweeps_address_terms_by_key():
    method = Method("two_mmd", (LossTerm("cross_entropy"), LossTerm("mmd", 0.5, name="near"), LossTerm("mmd", 2.0, name="far")))
    config = ExperimentConfig(method=method)
    assert config.method == "cross_entropy + 0.5*mmd as near + 2.0*mmd as far"
    assert parse_method(config.method).terms == method.terms
    spec, applied = method_at(config.method, {"weight:far": 4.0, "near.estimator": "unbiased"})
    assert parse_method(spec).terms[1:] == (LossTerm("mmd", 0.5, hparams=(("estimator", "unbiased"),), name="near"),
                                            LossTerm("mmd", 4.0, name="far"))
    sweep = {"name": "s", "methods": [config.method], "pairs": [("a", "b")], "seeds": [0]}
    with pytest.raises(ConfigError, match="term keys in its methods: cross_entropy, far, near"):
        validate_sweep({**sweep, "grid": {"weight:mmd": [1.0]}})


def test_tuple_hyper_parameter_from_the_cli(tmp_path):
    spec = "cross_entropy + 1.0*mmd(alphas=(0.5, 1.0, 2.0)), source_only"  # a comma inside brackets is no separator
    r = runner.invoke(app, ["run", "digits_rotate", "-m", spec, "--steps", "2", "--results-dir", str(tmp_path),
                            "--set", "batch_size=8", "--set", "log_every=1", "--set", "model=mlp",
                            "--set", "model_kwargs={'hidden': (16,)}"])
    assert r.exit_code == 0, r.output
    methods = sorted(p.parent.parent.name for p in tmp_path.rglob("seed0.json"))
    assert len(methods) == 2, methods
    with pytest.raises(LossError, match="alphas must be a non-empty tuple"):
        parse_method("cross_entropy + mmd(alphas=())").loss(
            {}, {}, LossInputs(*(jnp.ones((4, 2)),) * 4, jnp.zeros(4, jnp.int32), jnp.zeros(()), jax.random.key(0)))


def test_mcd_with_fixmatch_trains():
    result = train(ExperimentConfig(method="cross_entropy + mcd + fixmatch", steps=2, batch_size=8, log_every=1,
                                    eval_batch_size=256, model="mlp", model_kwargs={"hidden": (16,)}))
    logged = result.history[-2]
    assert {"loss/mcd", "loss/fixmatch", "loss/mcd_discrepancy_c"} <= set(logged)
    assert result.compile_count == 1


def test_mcd_step_gives_terms_per_domain_views_over_three_sources():
    """MCD's three-step trainer with 3 sources + 1 target: step A's m3sda term sees each domain
    (float64 reference at the initial parameters) and the whole run trains from a config."""
    from da_framework.methods.mcd import make_mcd_step

    n, d = 4, 6
    model = make_model("mlp", 3, None, hidden=(8,))
    method = parse_method("cross_entropy + mcd + 1.0*m3sda")
    tx = optax.sgd(0.01)
    rng = np.random.default_rng(2)
    xs = [rng.normal(i, 1.0, (n, d)).astype(np.float32) for i in range(3)]
    xt = rng.normal(2.0, 1.0, (n, d)).astype(np.float32)
    source_batch = {"image": jnp.concatenate(xs), "label": jnp.asarray(np.repeat(np.arange(3, dtype=np.int32), n))}
    target_batch = {"image": jnp.asarray(xt)}
    state = init_train_state(jax.random.key(0), model, method, tx, source_batch["image"], target_batch["image"],
                             source_batch["label"])
    step = make_mcd_step(model, method, tx, 10, num_sources=3, num_targets=1)
    _, metrics = jax.jit(step)(state, source_batch, target_batch, jax.random.key(1))
    variables = {"params": state.params["model"], **state.model_state}
    feats = [np.asarray(model.apply(variables, jnp.asarray(x), train=False)[1], np.float64) for x in xs + [xt]]
    np.testing.assert_allclose(float(metrics["loss/m3sda"]), _m3sda_np(feats[:3], feats[3]), rtol=1e-4)

    result = train(ExperimentConfig(source="digits/source,digits/blur", target="digits/rotate", method="mcd",
                                    steps=2, batch_size=8, log_every=1, eval_batch_size=256, model="mlp",
                                    model_kwargs={"hidden": (16,)}))
    assert {"source_val_accuracy/digits/source", "source_val_accuracy/digits/blur"} <= set(result.metrics)
    assert np.isfinite(result.history[-2]["loss/mcd_discrepancy_c"])


def test_trainer_key_is_hashed_only_away_from_its_default():
    from da_framework.results import config_hash, semantic_config

    base = ExperimentConfig(method="dann")
    assert "trainer" not in semantic_config(base)  # records written before the key existed keep their hash
    assert config_hash(base.replace(trainer="standard")) != config_hash(base)
    with pytest.raises(LossError, match="needs trainer 'mcd'"):
        train(ExperimentConfig(method="mcd", trainer="standard", steps=1, model="mlp", model_kwargs={"hidden": (8,)}))


def test_a_state_returned_by_a_term_whose_init_had_none_is_an_error_not_dropped():
    from da_framework.losses.registry import StatefulTerm, TermState, register_stateful_loss

    @register_stateful_loss("_test_forgot_init_state", description="test", reference="test", overwrite=True)
    def forgot() -> StatefulTerm:
        def apply(ts, inputs):
            return jnp.zeros(()), {"count": jnp.ones(())}, {}

        return StatefulTerm(init=lambda key, inputs: TermState((), ()), apply=apply)

    config = ExperimentConfig(method="cross_entropy + _test_forgot_init_state", steps=2, eval_every=0)
    with pytest.raises(LossError, match="'_test_forgot_init_state': apply returned a state but init's TermState.state was empty"):
        train(config)
