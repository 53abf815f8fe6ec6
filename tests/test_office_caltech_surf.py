"""Office-Caltech-10 SURF loader and preprocessing, the JDA 1-NN baseline on the real file, and the CORAL transform."""

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import DomainError
from da_framework.data.local import has_local
from da_framework.data.office_caltech import DATASET, DOMAINS, PAIRS, load_office_caltech_surf, pair_name, preprocess
from da_framework.transfer import TransferError
from da_framework.transfer.subspace import coral

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_DIR = next((d for d in (os.environ.get("DA_DATA_DIR"), str(SHARED)) if d and has_local(DATASET, d)), None)
needs_data = pytest.mark.skipif(
    DATA_DIR is None, reason="office_caltech10_surf.npz not in $DA_DATA_DIR or ../shared/data"
)


@pytest.fixture(scope="module")
def data():
    return load_office_caltech_surf(DATA_DIR)


def test_preprocess_hand_case():
    z = 1.5**0.5  # rows / 4 give column 0 = [.25, .5, 0]: (x - .25) / sqrt(.125 / 3) (population std)
    got = preprocess(np.array([[1, 3], [2, 2], [0, 4]]))
    np.testing.assert_allclose(got[:, 0], [0.0, z, -z], atol=1e-12)
    np.testing.assert_allclose(got[:, 1], [0.0, -z, z], atol=1e-12)
    assert got.dtype == np.float64
    const = preprocess(np.array([[1, 1], [2, 2], [3, 3]]))  # every row is [.5, .5]: a constant column becomes 0
    np.testing.assert_array_equal(const, np.zeros((3, 2)))
    with pytest.raises(DomainError, match="sum to 0"):
        preprocess(np.array([[1, 2], [0, 0]]))


def test_missing_file_is_one_line_domain_error(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as info:
        load_office_caltech_surf(str(tmp_path))
    msg = str(info.value)
    assert isinstance(info.value, DomainError) and "\n" not in msg
    assert str(tmp_path / DATASET / f"{DATASET}.npz") in msg and "layout" in msg


def test_pairs_are_the_twelve_ordered_pairs():
    assert len(set(PAIRS)) == 12 and all(s != t and {s, t} <= set(DOMAINS) for s, t in PAIRS)
    assert [pair_name(*p) for p in PAIRS[:3]] == ["C->A", "C->W", "C->D"]


@needs_data
def test_loader_matches_readme_shapes(data):
    sizes = {"amazon": 958, "webcam": 295, "dslr": 157, "caltech": 1123}
    per_class_dslr = [12, 21, 12, 13, 10, 24, 22, 12, 8, 23]
    for d, n in sizes.items():
        x, y = data.domain(d, preprocessed=False)
        assert x.shape == (n, 800) and y.shape == (n,) and set(np.unique(y)) == set(range(10))
        assert np.all(x == np.round(x)) and x.min() == 0 and not x.flags.writeable
    assert np.bincount(data.labels["dslr"]).tolist() == per_class_dslr
    assert data.class_names[0] == "back_pack" and data.class_names[-1] == "projector"
    for s, t in PAIRS:
        parts = data.splits[(s, t)]
        assert parts["train_source"].shape == (20, 200 if s == "amazon" else 80)
        assert parts["train_target"].shape == (20, 30)
        assert parts["test_target"].shape == (20, sizes[t] - 30)
    split = data.trial("webcam", "dslr", 7)
    assert not set(split.train_target) & set(split.test_target)
    assert set(split.train_target) | set(split.test_target) == set(range(157))
    assert np.bincount(data.labels["webcam"][split.train_source]).tolist() == [8] * 10
    x, _ = data.domain("dslr")
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-12)
    with pytest.raises(DomainError, match="trial"):
        data.trial("webcam", "dslr", 20)


@needs_data
@pytest.mark.parametrize("pair,published", [(("webcam", "dslr"), 59.24), (("dslr", "webcam"), 63.39), (("caltech", "amazon"), 23.70)])  # fmt: skip
def test_nn_baseline_reproduces_jda_table2(data, pair, published):
    """1-NN source -> target on the preprocessed features: JDA (Long et al., ICCV 2013) Table 2, NN column."""
    (xs, ys), (xt, yt) = data.domain(pair[0]), data.domain(pair[1])
    d2 = (xt**2).sum(1)[:, None] + (xs**2).sum(1)[None] - 2 * xt @ xs.T
    assert round(100 * float(np.mean(ys[np.argmin(d2, 1)] == yt)), 2) == published


def _two_gaussians(rng, n_s=60, n_t=50, d=5):
    """Source and target with different, non-commuting covariances (so the order of the factors matters)."""
    xs = rng.normal(size=(n_s, d)) @ rng.normal(size=(d, d))
    xt = rng.normal(size=(n_t, d)) @ rng.normal(size=(d, d)) + 2.0
    return xs, xt


def test_coral_matches_float64_reference():
    xs, xt = _two_gaussians(np.random.default_rng(0))
    cs, ct = np.cov(xs, rowvar=False) + np.eye(5), np.cov(xt, rowvar=False) + np.eye(5)
    ref = xs @ np.linalg.inv(scipy.linalg.sqrtm(cs)).real @ scipy.linalg.sqrtm(ct).real
    fit = coral(xs.astype(np.float32), xt.astype(np.float32))
    np.testing.assert_allclose(np.asarray(fit.transform_source(xs.astype(np.float32))), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(fit.transform_target(xt.astype(np.float32))), xt.astype(np.float32))


def test_coral_recolours_the_regularised_covariance():
    """A^T (C_s + l I) A = C_t + l I for any l; the plain covariances match exactly only at l = 0."""
    xs, xt = _two_gaussians(np.random.default_rng(1))
    cs, ct = np.cov(xs, rowvar=False), np.cov(xt, rowvar=False)
    for lam in (1.0, 0.3):
        a = np.asarray(coral(xs, xt, regularizer=lam).transform, np.float64)
        np.testing.assert_allclose(a.T @ (cs + lam * np.eye(5)) @ a, ct + lam * np.eye(5), rtol=2e-4, atol=2e-4)
        gap = np.abs(np.cov(xs @ a, rowvar=False) - ct).max()
        assert gap > 1e-2 * lam  # cov(D_s A) = C_t - l C_t^(1/2) C_s^(-1) C_t^(1/2) is not cov(D_t)
    a = np.asarray(coral(xs, xt, regularizer=0.0).transform, np.float64)
    np.testing.assert_allclose(np.cov(xs @ a, rowvar=False), ct, rtol=2e-4, atol=2e-4)


def test_coral_bad_inputs():
    with pytest.raises(TransferError, match="widths differ"):
        coral(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(TransferError, match="regularizer"):
        coral(np.ones((5, 3)), np.ones((5, 3)), regularizer=-1.0)
    with pytest.raises(TransferError, match="singular"):
        coral(
            np.random.default_rng(0).normal(size=(3, 6)), np.random.default_rng(1).normal(size=(9, 6)), regularizer=0.0
        )
