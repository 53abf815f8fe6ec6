"""Models return (logits, features) with the documented parameter layout."""

import jax
import jax.numpy as jnp
import pytest

from da_framework.models import ModelError, make_model


@pytest.mark.parametrize(
    "name, shape", [("mlp", (3, 16, 16, 1)), ("lenet", (3, 16, 16, 1)), ("resnet8", (3, 32, 32, 3)), ("resnet18", (2, 64, 64, 3))]
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
