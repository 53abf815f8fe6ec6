"""Text backbones, multi-task heads and late fusion: shapes, masking, and per-encoder transfer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.models.fusion import LateFusionClassifier
from da_framework.models.lenet import LeNet
from da_framework.models.multitask import MultiTaskClassifier, multitask_loss
from da_framework.models.registry import make_model
from da_framework.models.text import BiLSTM, TextCNN
from da_framework.transfer import flatten, transfer_params

TOKENS = jnp.asarray([[5, 6, 7, 0, 0, 0], [3, 0, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4]], jnp.int32)


@pytest.mark.parametrize("name,width", [("text_cnn", 2 * 8), ("bilstm", 2 * 8)])
def test_text_models_shapes_and_padding(name, width):
    kwargs = {"vocab_size": 12, "embed_dim": 4}
    kwargs.update({"filters": 8} if name == "text_cnn" else {"hidden": 8})
    model = make_model(name, 2, None, **kwargs)
    variables = model.init(jax.random.key(0), TOKENS)
    logits, feats = model.apply(variables, TOKENS)
    assert logits.shape == (3, 2) and feats.shape == (3, width)
    assert variables["params"]["backbone"]["embedding"]["embedding"].shape == (12, 4)
    # extra padding does not change the features of a sequence
    padded = jnp.concatenate([TOKENS, jnp.zeros((3, 4), jnp.int32)], axis=1)
    np.testing.assert_allclose(model.apply(variables, padded)[1], feats, rtol=1e-5, atol=1e-6)


def test_embedding_transfers_from_cnn_to_bilstm():
    cnn = make_model("text_cnn", 2, None, vocab_size=12, embed_dim=4, filters=8)
    lstm = make_model("bilstm", 2, 16, vocab_size=12, embed_dim=4, hidden=8)
    src = cnn.init(jax.random.key(0), TOKENS)["params"]
    tgt = lstm.init(jax.random.key(1), TOKENS)["params"]
    new, report = transfer_params(src, tgt, include=r"^backbone/embedding/")
    assert report.copied == ["backbone/embedding/embedding"]
    np.testing.assert_array_equal(new["backbone"]["embedding"]["embedding"], src["backbone"]["embedding"]["embedding"])
    ft, fn = flatten(tgt), flatten(new)
    for p in ft:
        if p != "backbone/embedding/embedding":
            np.testing.assert_array_equal(fn[p], ft[p])


def test_multitask_heads_and_loss():
    model = MultiTaskClassifier(LeNet(channels=(4, 8), dense=16), {"digit": 10, "parity": 2}, bottleneck_dim=8)
    x = jnp.zeros((5, 16, 16, 1))
    variables = model.init(jax.random.key(0), x)
    logits, feats = model.apply(variables, x)
    assert logits["digit"].shape == (5, 10) and logits["parity"].shape == (5, 2) and feats.shape == (5, 8)
    assert {"backbone", "bottleneck", "head_digit", "head_parity"} == set(variables["params"])
    lo = {"a": jnp.asarray([[2.0, 0.0], [0.0, 1.0]]), "b": jnp.asarray([[1.0, 1.0], [0.0, 3.0]])}
    labels = {"a": jnp.asarray([0, -1]), "b": jnp.asarray([1, 1])}
    ce = lambda z, y: -(z[y] - np.log(np.exp(np.asarray(z, np.float64)).sum()))  # noqa: E731
    expect = 1.0 * ce(lo["a"][0], 0) + 0.5 * (ce(lo["b"][0], 1) + ce(lo["b"][1], 1)) / 2
    np.testing.assert_allclose(multitask_loss(lo, labels, {"a": 1.0, "b": 0.5}), expect, rtol=1e-6)
    with pytest.raises(ValueError, match="no labels"):
        multitask_loss(lo, {"a": labels["a"]})


@pytest.mark.parametrize("fusion", ["features", "logits"])
def test_late_fusion_transfer_one_encoder(fusion):
    model = LateFusionClassifier(LeNet(channels=(4, 8), dense=16), TextCNN(vocab_size=12, embed_dim=4, filters=8), 3, fusion, 8)
    inputs = {"image": jnp.zeros((3, 16, 16, 1)), "text": TOKENS}
    params = model.init(jax.random.key(0), inputs)["params"]
    logits, feats = model.apply({"params": params}, inputs)
    assert logits.shape == (3, 3) and feats.shape == (3, 8 if fusion == "features" else 16 + 16)
    image_src = make_model("lenet", 10, None, channels=(4, 8), dense=16).init(jax.random.key(5), inputs["image"])["params"]
    new, report = transfer_params(image_src, params, rename={"backbone/": "image_encoder/"}, include=r"^image_encoder/")
    assert set(report.copied) == {p for p in flatten(params) if p.startswith("image_encoder/")}
    fs, fp, fn = flatten(image_src), flatten(params), flatten(new)
    for p in fp:
        if p.startswith("image_encoder/"):
            np.testing.assert_array_equal(fn[p], fs["backbone/" + p[len("image_encoder/") :]])
        else:  # text encoder and heads untouched
            np.testing.assert_array_equal(fn[p], fp[p])
    with pytest.raises(ValueError, match="missing"):
        model.apply({"params": params}, {"image": inputs["image"]})
