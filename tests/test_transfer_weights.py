"""Weight transfer across architectures: what is copied, what is skipped and why; orbax round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.models.registry import make_model
from da_framework.transfer import TransferError, flatten, restore_model, save_model, transfer_params


def _init(model, shape=(2, 16, 16, 1), seed=0):
    return model.init(jax.random.key(seed), jnp.zeros(shape))["params"]


@pytest.fixture(scope="module")
def lenets():
    src = _init(make_model("lenet", 10, None, channels=(4, 8), dense=32), seed=0)
    tgt = _init(make_model("lenet", 10, 16, channels=(4, 8), dense=64), seed=1)
    return src, tgt


def test_match_by_path_and_shape(lenets):
    src, tgt = lenets
    new, report = transfer_params(src, tgt)
    fs, ft, fn = flatten(src), flatten(tgt), flatten(new)
    assert set(fn) == set(ft)
    # convolutions have equal shapes -> copied, bit-identical to the source
    expected_copied = {"backbone/Conv_0/kernel", "backbone/Conv_0/bias", "backbone/Conv_1/kernel", "backbone/Conv_1/bias"}
    assert set(report.copied) == expected_copied | {"head/bias"}  # (10,) == (10,)
    for p in expected_copied:
        np.testing.assert_array_equal(np.asarray(fn[p]), np.asarray(fs[p]))
    # dense 32 -> 64: shape mismatch, with both shapes recorded
    entry = {e.target_path: e for e in report.entries}
    assert entry["backbone/Dense_0/kernel"].status == "shape_mismatch"
    assert entry["backbone/Dense_0/kernel"].source_shape == (128, 32)
    assert entry["backbone/Dense_0/kernel"].target_shape == (128, 64)
    # head (32,10) vs (16,10): mismatch; bottleneck absent in the source: missing
    assert entry["head/kernel"].status == "shape_mismatch"
    assert set(report.missing) == {p for p in ft if p.startswith("bottleneck/")}
    # every leaf not copied is the target's own, unchanged
    for p in ft:
        if p not in report.copied:
            np.testing.assert_array_equal(np.asarray(fn[p]), np.asarray(ft[p]))
    assert report.num_copied_values == sum(np.asarray(fs[p]).size for p in report.copied)
    assert "Dense_0" in str(report) and report.table().row_count == len(ft)


def test_include_partial_and_exclude(lenets):
    src, tgt = lenets
    new, report = transfer_params(src, tgt, include=r"^backbone/Conv_0/")
    assert report.copied == ["backbone/Conv_0/bias", "backbone/Conv_0/kernel"]
    assert len(report.paths("excluded")) == len(flatten(tgt)) - 2
    np.testing.assert_array_equal(np.asarray(new["backbone"]["Conv_1"]["kernel"]), np.asarray(tgt["backbone"]["Conv_1"]["kernel"]))
    _, report = transfer_params(src, tgt, include=r"^backbone/", exclude=r"bias$")
    assert report.copied == ["backbone/Conv_0/kernel", "backbone/Conv_1/kernel"]


def test_rename_dict_and_regex():
    src = {"backbone": {"embedding": {"embedding": jnp.arange(6.0).reshape(3, 2)}}, "head": {"kernel": jnp.ones((2, 2))}}
    tgt = {"text_encoder": {"embedding": {"embedding": jnp.zeros((3, 2))}}, "image_encoder": {"w": jnp.zeros((2,))}}
    new, report = transfer_params(src, tgt, rename={"backbone/": "text_encoder/"})
    np.testing.assert_array_equal(new["text_encoder"]["embedding"]["embedding"], src["backbone"]["embedding"]["embedding"])
    assert report.missing == ["image_encoder/w"] and report.unused_source == ("head/kernel",)
    new2, _ = transfer_params(src, tgt, rename=[(r"^backbone/", "text_encoder/")])
    np.testing.assert_array_equal(new2["text_encoder"]["embedding"]["embedding"], new["text_encoder"]["embedding"]["embedding"])
    with pytest.raises(TransferError, match="both rename"):
        transfer_params(src, tgt, rename=[(r"^.*$", "x")])
    with pytest.raises(TransferError, match="regular expression"):
        transfer_params(src, tgt, include="(")
    with pytest.raises(TransferError, match="strict"):
        transfer_params(src, tgt, strict=True)


def test_dtype_follows_target():
    src = {"w": jnp.ones((2,), jnp.float32)}
    new, _ = transfer_params(src, {"w": jnp.zeros((2,), jnp.bfloat16)})
    assert new["w"].dtype == jnp.bfloat16


def test_orbax_round_trip(tmp_path, lenets):
    src, tgt = lenets
    path = save_model(tmp_path / "src", {"params": src}, {"model": "lenet", "dense": 32})
    variables, meta = restore_model(path)
    assert meta == {"model": "lenet", "dense": 32}
    fs, fr = flatten(src), flatten(variables["params"])
    assert set(fs) == set(fr)
    for p in fs:
        np.testing.assert_array_equal(np.asarray(fr[p]), np.asarray(fs[p]))
    new, report = transfer_params(variables["params"], tgt, include=r"^backbone/")
    np.testing.assert_array_equal(np.asarray(new["backbone"]["Conv_1"]["kernel"]), np.asarray(src["backbone"]["Conv_1"]["kernel"]))
    with pytest.raises(Exception, match="already exists"):
        save_model(path, {"params": src})
    with pytest.raises(Exception, match="no saved model"):
        restore_model(tmp_path / "nothing")


def test_widen_copies_leading_block(lenets):
    src, tgt = lenets
    new, report = transfer_params(src, tgt, include=r"^backbone/", widen=True)
    assert report.copied_partial == ["backbone/Dense_0/bias", "backbone/Dense_0/kernel"]
    k_new, k_src, k_tgt = (np.asarray(t["backbone"]["Dense_0"]["kernel"]) for t in (new, src, tgt))
    np.testing.assert_array_equal(k_new[:, :32], k_src)  # (128, 32) into (128, 64)
    np.testing.assert_array_equal(k_new[:, 32:], k_tgt[:, 32:])
    assert "partially copied 2" in report.summary()
    # a source wider than the target is still a mismatch
    _, back = transfer_params(tgt, src, include=r"^backbone/", widen=True)
    assert "backbone/Dense_0/kernel" in back.shape_mismatch
