"""The embedded digits domains and the batch pipeline."""

import numpy as np
import pytest

from da_framework.data import ArraySource, DomainError, MappedSource, batch_iterator, domain_names, get_domain
from da_framework.data.digits import SHIFTS, make_digits_domain


def test_every_digits_domain_is_registered_and_well_formed():
    for shift in [None, *SHIFTS]:
        name = "digits/source" if shift is None else f"digits/{shift}"
        assert name in domain_names()
        d = get_domain(name)
        assert d.input_shape == (16, 16, 1) and d.num_classes == 10
        for split in ("train", "val", "test"):
            arr = d.split(split).arrays
            assert arr["image"].dtype == np.float32 and arr["image"].shape[1:] == (16, 16, 1)
            assert arr["image"].min() >= 0.0 and arr["image"].max() <= 1.0
            assert set(np.unique(arr["label"])) <= set(range(10))


def test_source_and_target_pools_are_disjoint():
    src = make_digits_domain(None)
    clean = make_digits_domain("clean")
    a = {x.tobytes() for s in src.splits.values() for x in s.arrays["image"]}
    b = {x.tobytes() for s in clean.splits.values() for x in s.arrays["image"]}
    assert len(a & b) < 5  # only duplicate digits in sklearn's set could collide


def test_shifts_are_what_they_say():
    clean = make_digits_domain("clean").split("train").arrays["image"]
    inv = make_digits_domain("invert").split("train").arrays["image"]
    np.testing.assert_allclose(inv, 1.0 - clean, atol=1e-6)
    np.testing.assert_array_equal(
        make_digits_domain("clean").split("train").arrays["label"], make_digits_domain("rotate").split("train").arrays["label"]
    )
    assert not np.allclose(make_digits_domain("rotate").split("train").arrays["image"], clean)


def test_unknown_domain_and_split_list_valid_names():
    with pytest.raises(DomainError, match="valid domains: .*digits/rotate"):
        get_domain("digits/upside_down")
    with pytest.raises(DomainError, match="available splits"):
        get_domain("digits/source").split("holdout")


def test_batch_iterator_deterministic_and_covers_epoch():
    src = ArraySource({"image": np.arange(20, dtype=np.float32)[:, None], "label": np.arange(20)})
    a = [b["label"] for _, b in zip(range(5), batch_iterator(src, 8, seed=3))]
    b = [b["label"] for _, b in zip(range(5), batch_iterator(src, 8, seed=3))]
    c = [b["label"] for _, b in zip(range(5), batch_iterator(src, 8, seed=4))]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    first_epoch = np.concatenate(a)[:20]
    assert sorted(first_epoch.tolist()) == list(range(20))
    once = list(batch_iterator(src, 8, seed=0, shuffle=False, repeat=False, drop_remainder=False))
    assert [len(x["label"]) for x in once] == [8, 8, 4]


def test_grain_path_matches_protocol():
    src = MappedSource(ArraySource({"image": np.zeros((10, 2), np.float32), "label": np.arange(10)}), lambda r: r)
    batches = list(batch_iterator(src, 4, seed=0, repeat=False))
    assert [b["image"].shape for b in batches] == [(4, 2), (4, 2)]
    labels = np.concatenate([b["label"] for b in batches])
    assert len(set(labels.tolist())) == 8


def test_digits_pair_config_names_a_real_pair_and_rejects_unknown_shifts():
    from da_framework.config import from_dict
    from da_framework.data.digits import pair_config

    cfg = from_dict(pair_config("scale"))
    assert (cfg.source, cfg.target) == ("digits/source", "digits/scale")
    with pytest.raises(ValueError, match="valid: blur, clean"):
        pair_config("sheared")
