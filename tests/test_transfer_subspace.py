"""Subspace alignment and TCA on synthetic shifted Gaussians, against NumPy/SciPy float64 references."""

import numpy as np
import pytest
import scipy.linalg

from da_framework.transfer import TransferError
from da_framework.transfer.subspace import coral_distance, linear_mmd, mmd_matrix, pca_basis, subspace_alignment, tca

D = 10


def _domain(rng, n, shift, rot):
    y = rng.integers(0, 2, n)
    z = rng.normal(size=(n, D)) * np.array([3, 2, 1] + [0.3] * (D - 3))
    z[:, 0] += (2 * y - 1) * 3.0
    return (z @ rot.T + shift).astype(np.float32), y


@pytest.fixture(scope="module")
def shifted():
    """Two classes; the target is rotated by 40 degrees in a (signal, noise) plane and translated."""
    rng = np.random.default_rng(0)
    theta = np.deg2rad(40)
    rot = np.eye(D)
    rot[[0, 0, 3, 3], [0, 3, 0, 3]] = [np.cos(theta), -np.sin(theta), np.sin(theta), np.cos(theta)]
    xs, ys = _domain(rng, 300, 0.0, np.eye(D))
    xt, yt = _domain(rng, 250, np.r_[4.0, 2.0, 0.0, np.zeros(D - 3)], rot)
    return xs, ys, xt, yt


def _centroid_accuracy(a, ya, b, yb):
    c = np.stack([a[ya == k].mean(0) for k in range(2)])
    return float(np.mean(np.argmin(((b[:, None] - c[None]) ** 2).sum(-1), 1) == yb))


def test_pca_basis_matches_numpy(shifted):
    xs = shifted[0].astype(np.float64)
    _, _, vt = np.linalg.svd(xs - xs.mean(0))
    got = np.asarray(pca_basis(shifted[0], 3))
    for j in range(3):  # same direction up to sign
        np.testing.assert_allclose(abs(got[:, j] @ vt[j]), 1.0, atol=1e-4)
    np.testing.assert_allclose(got.T @ got, np.eye(3), atol=1e-5)


def test_subspace_alignment_closed_form_and_reduces_shift(shifted):
    xs, ys, xt, yt = shifted
    sa = subspace_alignment(xs, xt, 3)
    ps, pt, m = (np.asarray(a, np.float64) for a in (sa.source_basis, sa.target_basis, sa.alignment))
    # M* = argmin ||P_S M - P_T||_F (least squares; P_S orthonormal)
    np.testing.assert_allclose(m, np.linalg.lstsq(ps, pt, rcond=None)[0], atol=1e-5)
    assert np.linalg.norm(ps @ m - pt) < np.linalg.norm(ps - pt)
    zs, zt = np.asarray(sa.transform_source(xs)), np.asarray(sa.transform_target(xt))
    assert float(linear_mmd(zs, zt)) < 1e-3 * float(linear_mmd(xs, xt))
    # a source nearest-centroid classifier transfers better after alignment
    raw, aligned = _centroid_accuracy(xs, ys, xt, yt), _centroid_accuracy(zs, ys, zt, yt)
    assert aligned > raw + 0.15, (raw, aligned)


def _tca_reference(xs, xt, m, mu):
    x = np.concatenate([xs, xt]).astype(np.float64)
    n = len(x)
    k = x @ x.T
    e = np.r_[np.full(len(xs), 1 / len(xs)), np.full(len(xt), -1 / len(xt))]
    h = np.eye(n) - 1.0 / n
    vals, vecs = scipy.linalg.eigh(k @ h @ k, k @ np.outer(e, e) @ k + mu * np.eye(n))
    return vals[::-1][:m], vecs[:, ::-1][:, :m], k


def test_tca_matches_float64_generalised_eigenproblem(shifted):
    xs, xt = shifted[0][:60], shifted[2][:50]
    fit = tca(xs, xt, 3, mu=1.0)
    vals, vecs, k = _tca_reference(xs, xt, 3, 1.0)
    np.testing.assert_allclose(np.asarray(fit.eigenvalues), vals, rtol=2e-3)
    z_ref = k @ vecs
    z = np.asarray(fit.transform(np.concatenate([xs, xt])), np.float64)
    for j in range(3):  # embeddings equal up to sign
        cos = abs(z[:, j] @ z_ref[:, j]) / (np.linalg.norm(z[:, j]) * np.linalg.norm(z_ref[:, j]))
        np.testing.assert_allclose(cos, 1.0, atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(mmd_matrix(2, 1)), [[0.25, 0.25, -0.5], [0.25, 0.25, -0.5], [-0.5, -0.5, 1.0]]
    )


def test_tca_removes_mean_shift(shifted):
    xs, _, xt, _ = shifted
    fit = tca(xs[:150], xt[:150], 3, mu=1.0)
    zs, zt = fit.source_embedding, fit.target_embedding
    z = np.concatenate([zs, zt])
    x = np.concatenate([xs[:150], xt[:150]])
    assert float(linear_mmd(zs, zt)) / z.var(0).sum() < 1e-3 * float(linear_mmd(xs[:150], xt[:150])) / x.var(0).sum()
    rbf = tca(xs[:80], xt[:80], 2, kernel="rbf")
    assert rbf.transform(xs[:5]).shape == (5, 2)
    assert float(coral_distance(xs, xs)) == 0.0


def test_bad_inputs():
    with pytest.raises(TransferError, match="widths differ"):
        subspace_alignment(np.zeros((5, 3)), np.zeros((5, 4)), 2)
    with pytest.raises(TransferError, match="dim must be"):
        pca_basis(np.zeros((5, 3)), 4)
    with pytest.raises(TransferError, match="mu"):
        tca(np.ones((4, 2)), np.ones((4, 2)), 1, mu=0.0)
    with pytest.raises(TransferError, match="kernel"):
        tca(np.ones((4, 2)), np.ones((4, 2)), 1, kernel="poly")


def test_tca_unit_scaling_same_subspace_unit_columns(shifted):
    xs, xt = shifted[0][:60], shifted[2][:50]
    con = tca(xs, xt, 3, mu=1.0)
    unit = tca(xs, xt, 3, mu=1.0, scaling="unit")
    w_con, w_unit = (np.asarray(f.components, np.float64) for f in (con, unit))
    np.testing.assert_allclose(np.linalg.norm(w_unit, axis=0), 1.0, rtol=1e-5)
    # the same eigenvectors, rescaled: w_con = w_unit * ||w_con||
    np.testing.assert_allclose(w_unit * np.linalg.norm(w_con, axis=0), w_con, rtol=1e-3, atol=1e-6)
    assert not np.allclose(np.linalg.norm(w_con, axis=0), 1.0, rtol=1e-2)  # the constraint scaling is not unit norm
    with pytest.raises(TransferError, match="scaling"):
        tca(xs, xt, 3, scaling="whiten")
