"""Models return (logits, features) with the documented parameter layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.models import ModelError, make_model


@pytest.mark.parametrize(
    "name, shape", [("mlp", (3, 16, 16, 1)), ("lenet", (3, 16, 16, 1)), ("resnet8", (3, 32, 32, 3)), pytest.param("resnet18", (2, 32, 32, 3), marks=pytest.mark.slow), ("vit_tiny", (2, 16, 16, 3))]
)
@pytest.mark.parametrize("bottleneck", [None, 32])
def test_models_return_logits_and_features(name, shape, bottleneck):
    model = make_model(name, num_classes=7, bottleneck_dim=bottleneck)
    variables = model.init(jax.random.key(0), jnp.zeros(shape))
    assert set(variables["params"]) == ({"backbone", "head"} | ({"bottleneck"} if bottleneck else set()))
    (logits, feats), _ = model.apply(variables, jnp.ones(shape), train=True, mutable=["batch_stats"])
    assert logits.shape == (shape[0], 7)
    assert feats.ndim == 2 and feats.shape[0] == shape[0]
    if bottleneck:
        assert feats.shape[1] == bottleneck


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="valid models: .*lenet"):
        make_model("vgg", 10)
    with pytest.raises(ModelError, match="bad arguments"):
        make_model("lenet", 10, depth=3)


def test_vit_b16_has_vit_base_size_and_width():
    """ViT-Base/16 at 224x224: 768 features and 85.8M backbone parameters (as in the paper, 86M)."""
    model = make_model("vit_b16", num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    n = sum(x.size for x in jax.tree.leaves(shapes["params"]["backbone"]))
    # embedding 16*16*3*768+768, cls 768, positions 197*768, 12 blocks of
    # (2 LayerNorms 4*768, attention 4*(768*768+768), MLP 768*3072+3072+3072*768+768), final LN 2*768
    block = 4 * 768 + 4 * (768 * 768 + 768) + 768 * 3072 + 3072 + 3072 * 768 + 768
    assert n == (16 * 16 * 3 * 768 + 768) + 768 + 197 * 768 + 12 * block + 2 * 768
    assert 85e6 < n < 87e6
    logits, feats = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3))), shapes)
    assert feats.shape == (2, 768) and logits.shape == (2, 10)


def test_vit_rejects_images_that_do_not_tile_into_patches():
    model = make_model("vit_tiny", num_classes=3)
    with pytest.raises(ValueError, match="multiples of the patch size 4"):
        model.init(jax.random.key(0), jnp.zeros((1, 18, 16, 3)))



@pytest.mark.slow  # 21 s; ViT forward parity is in CI (tests/test_pretrained_import.py), one-compile DANN in tests/test_train.py
def test_vit_trains_with_dann_in_one_compilation():
    """The ViT backbone runs through train() in bfloat16 (digits 16x16 images, patch 4)."""
    from da_framework.config import ExperimentConfig
    from da_framework.data import get_domain
    from da_framework.train import train

    r = train(ExperimentConfig(method="dann", model="vit_tiny", bottleneck_dim=16, batch_size=8, steps=3,
                               log_every=1, compute_dtype="bfloat16"))
    assert r.compile_count == 1 and int(r.state.step) == 3
    logged = [h for h in r.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    for h in logged:  # the bfloat16 step's total is the float32 sum of its terms (dann weight 1.0)
        assert h["loss"] == pytest.approx(h["loss/cross_entropy"] + h["loss/dann"], rel=1e-6)
    # the reported accuracy is the final ViT's, recomputed by one unpadded float32 forward pass
    test = get_domain(r.config.target).split("test").arrays
    model = make_model("vit_tiny", 10, 16)
    logits, _ = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
        r.state.params["model"], jnp.asarray(test["image"])
    )
    expected = np.mean(np.argmax(np.asarray(logits), -1) == test["label"])
    assert r.metrics["target_test_accuracy"] == pytest.approx(expected, abs=1e-12)
