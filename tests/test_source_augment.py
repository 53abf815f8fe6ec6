"""Config key ``source_augment``: the spec parser, the ops SHOT's USPS source needs, the step wrapper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ExperimentConfig
from da_framework.data.augment import random_crop, random_rotation
from da_framework.data.augment_spec import AugmentSpecError, make_augment, parse_augment
from da_framework.results import config_hash
from da_framework.train.loop import build, train
from da_framework.train.source_augment import AUGMENT_SALT, AugmentedStep, trainer_step, with_source_augment
from da_framework.train.target_pass import TargetPassStep

SHOT_USPS = "random_crop(pad=4, mode='constant') | random_rotation(max_degrees=10, order=0, mode='constant')"
TINY = {"source": "digits/source", "target": "digits/rotate", "model": "lenet",
        "model_kwargs": {"channels": (4, 8), "dense": 16}, "bottleneck_dim": None, "batch_size": 16, "log_every": 1}


def _images(n: int = 6, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, size=(n, size, size, 1)).astype(np.float32)


def test_parse_reads_ops_in_order_with_literal_arguments():
    assert parse_augment(SHOT_USPS) == [
        ("random_crop", (), {"pad": 4, "mode": "constant"}),
        ("random_rotation", (), {"max_degrees": 10, "order": 0, "mode": "constant"}),
    ]
    assert parse_augment("random_flip | random_crop(3)") == [("random_flip", (), {}), ("random_crop", (3,), {})]
    assert parse_augment("  ") == [] and make_augment("") is None


@pytest.mark.parametrize("spec, words", [
    ("random_crp(pad=2)", "unknown augment op 'random_crp'; valid: color_jitter"),
    ("random_crop(pd=2)", "random_crop: got an unexpected keyword argument 'pd'; it takes pad=2, mode='reflect'"),
    ("random_crop(pad=x)", "argument 'x' is not a literal"),
    ("random_crop(pad=2) || random_flip", "empty op between '|'s"),
    ("augment.random_crop(pad=2)", "is not a call like random_crop(pad=4)"),
    ("random_crop(**{'pad': 2})", "**kwargs is not allowed"),
    ("random_crop(pad=2", "is not a call like"),
])
def test_bad_specs_are_one_line_errors(spec, words):
    with pytest.raises(AugmentSpecError) as e:
        parse_augment(spec)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_constant_crop_is_a_window_of_the_zero_padded_image():
    x = _images()
    out = np.asarray(random_crop(jax.random.key(3), jnp.asarray(x), pad=4, mode="constant"))
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9) if np.array_equal(out[i], padded[i, dy:dy + 12, dx:dx + 12])]
        assert hits, f"example {i} is no window of its padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # per-example offsets, not one shared shift


def test_rotation_modes_nearest_interpolation_and_identity():
    x = jnp.ones((16, 12, 12, 1), jnp.float32)
    assert np.array_equal(np.asarray(random_rotation(jax.random.key(0), x, max_degrees=0.0, order=0)), np.asarray(x))
    const = np.asarray(random_rotation(jax.random.key(1), x, max_degrees=45.0, order=0, mode="constant", cval=0.25))
    assert set(np.unique(const)) <= {0.25, 1.0} and (const == 0.25).any()  # nearest: only input values or the fill
    edge = np.asarray(random_rotation(jax.random.key(1), x, max_degrees=45.0, order=0, mode="nearest"))
    assert np.array_equal(edge, np.asarray(x))  # edge fill of a constant image is the constant
    with pytest.raises(ValueError, match="order must be 0"):
        random_rotation(jax.random.key(0), x, order=3)


def test_wrapped_step_sees_augmented_source_and_the_original_key():
    seen = {}

    def step(state, source, target, key):
        seen.update(source=source, target=target, key=key)
        return state, {}

    wrapped = with_source_augment(step, SHOT_USPS)
    assert isinstance(wrapped, AugmentedStep) and trainer_step(wrapped) is step
    assert with_source_augment(step, "") is step and trainer_step(step) is step
    x = jnp.asarray(_images(size=28))
    labels = jnp.arange(6, dtype=jnp.int32)
    xt = jnp.asarray(_images(size=28, seed=1))
    key = jax.random.key(7)
    wrapped(None, {"image": x, "label": labels}, {"image": xt}, key)
    expected = make_augment(SHOT_USPS)(jax.random.fold_in(key, AUGMENT_SALT), x)
    np.testing.assert_array_equal(np.asarray(seen["source"]["image"]), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(seen["source"]["label"]), np.asarray(labels))
    assert seen["target"]["image"] is xt and seen["key"] is key


def test_runs_through_train_and_through_a_target_pass_trainer():
    plain = ExperimentConfig(method="dann", steps=3, **TINY)
    aug = plain.replace(source_augment="random_crop(pad=2, mode='constant')")
    assert config_hash(plain) != config_hash(aug)
    assert config_hash(plain) == config_hash(plain.replace(source_augment=""))
    assert isinstance(build(aug).step, AugmentedStep) and not isinstance(build(plain).step, AugmentedStep)
    shot = ExperimentConfig(method="cross_entropy + shot(pretrain_steps=2, interval=2)", steps=4,
                            source_augment="random_flip", **TINY)
    assert isinstance(trainer_step(build(shot).step), TargetPassStep)
    assert len(train(shot).history) > 0


def test_a_bad_spec_fails_at_build():
    with pytest.raises(AugmentSpecError, match="unknown augment op 'flip'"):
        build(ExperimentConfig(method="source_only", steps=1, source_augment="flip", **TINY))


def test_inputs_that_are_not_1_or_3_channel_images_are_refused_at_build():
    with pytest.raises(AugmentSpecError, match=r"1 or 3 channels; the source's 'image' inputs have shape \(28, 28, 2\)"):
        with_source_augment(lambda *a: a, "random_flip", "image", (28, 28, 2))
    with pytest.raises(AugmentSpecError, match="'text' inputs have shape"):
        with_source_augment(lambda *a: a, "random_flip", "text", (64,))
    assert isinstance(with_source_augment(lambda *a: a, "random_flip", "image", (28, 28, 1)), AugmentedStep)
