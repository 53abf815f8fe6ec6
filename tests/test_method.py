"""Method specs, presets and the weighted sum of terms."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.losses import DomainDiscriminator, LossError, LossInputs, cross_entropy, mk_mmd, register_loss
from da_framework.train.method import PRESETS, parse_method


def _inputs(progress=0.5):
    rng = np.random.default_rng(0)
    return LossInputs(
        source_features=jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
        target_features=jnp.asarray(rng.normal(size=(8, 4)) + 1, jnp.float32),
        source_logits=jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
        target_logits=jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
        source_labels=jnp.asarray(rng.integers(0, 3, 8), jnp.int32),
        progress=jnp.asarray(progress, jnp.float32),
        key=jax.random.key(0),
    )


def test_presets_parse():
    for name in PRESETS:
        assert parse_method(name).terms[0].loss == "cross_entropy"


def test_spec_round_trip():
    m = parse_method("cross_entropy + 0.5*mmd(estimator=unbiased)@linear")
    assert [(t.loss, t.weight, t.schedule) for t in m.terms] == [("cross_entropy", 1.0, "constant"), ("mmd", 0.5, "linear")]
    assert dict(m.terms[1].hparams) == {"estimator": "unbiased"}
    assert parse_method(m.spec()).terms == m.terms
    assert parse_method("cross_entropy + 1e-1*mmd").terms[1].weight == pytest.approx(0.1)


def test_weighted_sum_matches_hand_computation():
    inputs = _inputs(progress=0.5)
    total, parts, _, _ = parse_method("cross_entropy + 0.5*mmd@linear").loss({}, {}, inputs)
    ce = cross_entropy(inputs.source_logits, inputs.source_labels)
    mmd = mk_mmd(inputs.source_features, inputs.target_features)
    np.testing.assert_allclose(total, ce + 0.5 * 0.5 * mmd, rtol=1e-6)
    np.testing.assert_allclose(parts["mmd"], mmd, rtol=1e-6)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("cross_entropy + nonsense", "unknown loss 'nonsense'; valid losses:"),
        ("cross_entropy + 2*", "cannot parse method term"),
        ("cross_entropy + mmd@sometimes", "unknown schedule"),
        ("cross_entropy + mmd(bandwidth=3)", "has no hyper-parameter 'bandwidth'"),
        ("mmd + mmd", "two terms keyed .mmd.; a loss used twice needs a key"),
    ],
)
def test_bad_specs_give_clear_errors(spec, match):
    with pytest.raises((LossError, ValueError), match=match):
        parse_method(spec)


def test_registered_loss_is_usable_by_name():
    @register_loss("test_mean_gap", description="gap of feature means", reference="(test)", overwrite=True)
    def mean_gap(inputs: LossInputs, power: float = 2.0) -> jax.Array:
        return jnp.sum(jnp.abs(inputs.source_features.mean(0) - inputs.target_features.mean(0)) ** power)

    inputs = _inputs()
    _, parts, _, _ = parse_method("cross_entropy + test_mean_gap(power=1.0)").loss({}, {}, inputs)
    ref = np.abs(np.mean(inputs.source_features, 0) - np.mean(inputs.target_features, 0)).sum()
    np.testing.assert_allclose(parts["test_mean_gap"], ref, rtol=1e-6)


def _np_domain_bce(s: np.ndarray, t: np.ndarray) -> float:
    """Float64 DANN discriminator loss: source is class 1, target class 0, each domain weighs half."""
    return 0.5 * (np.mean(np.logaddexp(0.0, -s)) + np.mean(np.logaddexp(0.0, t)))


def test_dann_aux_parameters_are_created_and_used():
    method = parse_method("dann")
    inputs = _inputs()
    aux = method.init(jax.random.key(1), inputs)[0]
    assert set(aux) == {"dann"}
    inputs = dataclasses.replace(inputs, progress=jnp.asarray(1.0))
    total, parts, _, _ = method.loss(aux, {}, inputs)
    # the term is the BCE of the discriminator built from these aux parameters, on both domains' features
    disc = DomainDiscriminator()
    s = np.asarray(disc.apply({"params": aux["dann"]}, inputs.source_features), np.float64)
    t = np.asarray(disc.apply({"params": aux["dann"]}, inputs.target_features), np.float64)
    np.testing.assert_allclose(parts["dann"], _np_domain_bce(s, t), rtol=1e-5)
    ce = cross_entropy(inputs.source_logits, inputs.source_labels)
    np.testing.assert_allclose(total, ce + 1.0 * parts["dann"], rtol=1e-6)
    # other aux parameters give another loss: an all-zero discriminator outputs logit 0, loss log 2;
    # shifting its output bias by b gives (softplus(-b) + softplus(b)) / 2
    zero = jax.tree.map(jnp.zeros_like, aux)
    assert float(method.loss(zero, {}, inputs)[1]["dann"]) == pytest.approx(np.log(2.0), rel=1e-6)
    last = next(k for k, layer in zero["dann"].items() if layer["bias"].shape == (1,))  # the output layer
    shifted = {"dann": {**zero["dann"], last: {**zero["dann"][last], "bias": jnp.full((1,), 2.0)}}}
    expected = _np_domain_bce(np.array([2.0]), np.array([2.0]))
    assert float(method.loss(shifted, {}, inputs)[1]["dann"]) == pytest.approx(expected, rel=1e-6)


def test_a_preset_name_with_arguments_alone_is_refused_not_trained_without_labels():
    # 'dann(hidden_size=1024)' once parsed as the DANN loss alone: a run trained no classifier
    # (7.7% on USPS) and nothing said why.  Now it is a one-line error naming both spellings.
    with pytest.raises(LossError, match=r"'dann' alone.*'cross_entropy \+ dann\(hidden_size=1024\)'.*'1.0\*dann"):
        parse_method("dann(hidden_size=1024)")
    with pytest.raises(LossError, match=r"cross_entropy\(label_smoothing=0.1\) \+ shot\(pretrain_steps=5\)"):
        parse_method("shot(pretrain_steps=5)")
    with pytest.raises(LossError, match="'dann' alone"):
        parse_method("dann@dann_ramp")
    # an explicit weight says the loss alone is meant; the bare preset name and a loss that is
    # its own preset's only term are unchanged
    assert [t.loss for t in parse_method("1.0*dann(hidden_size=8)").terms] == ["dann"]
    assert [t.loss for t in parse_method("dann").terms] == ["cross_entropy", "dann"]
    assert [t.loss for t in parse_method("cross_entropy(label_smoothing=0.1)").terms] == ["cross_entropy"]
    hp = parse_method("cross_entropy + dann(hidden_size=8)").terms[1].hparams
    assert dict(hp) == {"hidden_size": 8}
