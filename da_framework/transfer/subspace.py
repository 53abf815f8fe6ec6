"""Closed-form feature-space transfer baselines: subspace alignment, TCA and CORAL.

Pure functions of feature arrays (e.g. a frozen backbone's features of both domains); a
classifier trained on the mapped source features is then applied to the mapped target
features.

* Subspace alignment (Fernando, Habrard, Sebban & Tuytelaars, "Unsupervised Visual Domain
  Adaptation Using Subspace Alignment", ICCV 2013, sec. 3.2-3.3): with P_S, P_T the top-d
  PCA bases (D x d) of the centred source and target features, the alignment
  M* = argmin_M ||P_S M - P_T||_F = P_S^T P_T (eq. 3-4), source features map to
  (x_s - mu_s) P_S M* and target features to (x_t - mu_t) P_T.
* Transfer component analysis (Pan, Tsang, Kwok & Yang, "Domain Adaptation via Transfer
  Component Analysis", IEEE TNN 2011, sec. IV-B): with K the kernel matrix of all
  n = n_s + n_t points, L the MMD matrix (1/n_s^2 within source, 1/n_t^2 within target,
  -1/(n_s n_t) across) and H = I - 11^T / n, TCA solves

      min_W tr(W^T K L K W) + mu tr(W^T W)   s.t.   W^T K H K W = I      (eq. 7)

  whose solution W is the m leading eigenvectors of (K L K + mu I)^{-1} K H K (eq. 8-9); the
  embedding is Z = K W.  Here the equivalent symmetric-definite generalised problem
  K H K w = lambda (K L K + mu I) w is solved in float64 on the host (SciPy), whatever the
  input dtype: K H K and K L K square the kernel's scale and conditioning, which float32
  cannot resolve (a float32 Cholesky route gave eigenvalues off by 60% or NaN).  Each
  eigenvector is then scaled to satisfy the paper's constraint w^T K H K w = 1 (the
  eigenvectors are already K H K-orthogonal), so the centred embedding H Z has orthonormal
  columns, Z^T H Z = I (``scaling="constraint"``).  ``scaling="unit"`` instead gives each
  column of W unit Euclidean norm, the convention of eigen-solvers that return unit-norm
  eigenvectors (e.g. ``scipy.linalg.eig`` in jindongwang/transferlearning's ``TCA.py``): the
  same subspace, but the components keep their relative scales, which matters to a
  distance-based classifier such as 1-NN (docs/office_caltech_surf.md measures both).
* CORAL, correlation alignment (Sun, Feng & Saenko, "Return of Frustratingly Easy Domain
  Adaptation", AAAI 2016, Algorithm 1): with C_S = cov(D_S) + lambda I and
  C_T = cov(D_T) + lambda I (the paper's lambda = 1), the source features are whitened and
  recoloured, D_S <- D_S C_S^{-1/2} C_T^{1/2}; target features are left as they are.  The
  map A = C_S^{-1/2} C_T^{1/2} satisfies A^T C_S A = C_T exactly, i.e. it sends the
  *regularised* source covariance to the regularised target one; the plain covariance of the
  recoloured source is cov(D_S A) = C_T - lambda C_T^{1/2} C_S^{-1} C_T^{1/2}, which equals
  cov(D_T) only as lambda -> 0 (for full-rank covariances).  As in Algorithm 1 the features
  are not centred (the usual per-domain z-scoring makes them zero-mean).  Computed in float64
  on the host with symmetric eigendecompositions.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from da_framework.transfer.weights import TransferError

Kernel = Literal["linear", "rbf"]
Scaling = Literal["constraint", "unit"]


def _check_features(x: jax.Array, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise TransferError(f"{name}: expected a (n >= 2, d) feature array, got shape {x.shape}")
    return x


def pca_basis(x: jax.Array, dim: int) -> jax.Array:
    """The top-``dim`` principal directions (d, dim) of ``x`` (n, d), via SVD of the centred data.

    Each column's sign is fixed so that its largest-magnitude entry is positive.
    """
    x = _check_features(x, "pca_basis")
    if not 1 <= dim <= min(x.shape):
        raise TransferError(f"pca_basis: dim must be in [1, {min(x.shape)}] for features of shape {x.shape}, got {dim}")
    _, _, vt = jnp.linalg.svd(x - x.mean(0), full_matrices=False)
    basis = vt[:dim].T
    signs = jnp.sign(basis[jnp.argmax(jnp.abs(basis), axis=0), jnp.arange(dim)])
    return basis * jnp.where(signs == 0, 1.0, signs)


@dataclasses.dataclass(frozen=True)
class SubspaceAlignment:
    """A fitted subspace alignment (Fernando et al. 2013).

    Attributes:
      source_mean, target_mean: feature means (d,).
      source_basis, target_basis: PCA bases P_S, P_T (d, dim).
      alignment: M* = P_S^T P_T (dim, dim).
    """

    source_mean: jax.Array
    target_mean: jax.Array
    source_basis: jax.Array
    target_basis: jax.Array
    alignment: jax.Array

    def transform_source(self, x: jax.Array) -> jax.Array:
        """Source features in the target-aligned subspace: (x - mu_s) P_S M*."""
        return (x - self.source_mean) @ self.source_basis @ self.alignment

    def transform_target(self, x: jax.Array) -> jax.Array:
        """Target features in the target subspace: (x - mu_t) P_T."""
        return (x - self.target_mean) @ self.target_basis


def subspace_alignment(source: jax.Array, target: jax.Array, dim: int) -> SubspaceAlignment:
    """Fits subspace alignment of ``source`` (n_s, d) onto ``target`` (n_t, d) features."""
    source, target = _check_features(source, "subspace_alignment"), _check_features(target, "subspace_alignment")
    if source.shape[1] != target.shape[1]:
        raise TransferError(f"subspace_alignment: feature widths differ: {source.shape[1]} vs {target.shape[1]}")
    ps, pt = pca_basis(source, dim), pca_basis(target, dim)
    return SubspaceAlignment(source.mean(0), target.mean(0), ps, pt, ps.T @ pt)


def _kernel(a, b, kernel: Kernel, gamma: float | None, xp):
    """``kernel_matrix`` in the array module ``xp`` (jax.numpy, or NumPy for the float64 fit)."""
    if kernel == "linear":
        return a @ b.T
    if kernel == "rbf":
        g = 1.0 / a.shape[1] if gamma is None else gamma
        centre = (xp.sum(a, 0) + xp.sum(b, 0)) / (a.shape[0] + b.shape[0])  # no cancellation at large offsets
        a, b = a - centre, b - centre
        d2 = xp.sum(a**2, 1)[:, None] + xp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
        return xp.exp(-g * xp.maximum(d2, 0.0))
    raise TransferError(f"unknown kernel {kernel!r}; valid: linear, rbf")


def kernel_matrix(a: jax.Array, b: jax.Array, kernel: Kernel = "linear", gamma: float | None = None) -> jax.Array:
    """``k(a_i, b_j)``: linear ``a b^T`` or Gaussian ``exp(-gamma ||a_i - b_j||^2)`` (gamma default 1/d)."""
    return _kernel(jnp.asarray(a), jnp.asarray(b), kernel, gamma, jnp)


def _mmd_vector(n_source: int, n_target: int, xp):
    """e with L = e e^T: 1/n_s on source points, -1/n_t on target points."""
    return xp.concatenate([xp.full((n_source,), 1.0 / n_source), xp.full((n_target,), -1.0 / n_target)])


def mmd_matrix(n_source: int, n_target: int) -> jax.Array:
    """TCA's L: tr(K L) is the (biased) squared MMD between the two sets' kernel means."""
    e = _mmd_vector(n_source, n_target, jnp)
    return jnp.outer(e, e)


@dataclasses.dataclass(frozen=True)
class TCA:
    """Fitted transfer component analysis (Pan et al. 2011).

    Attributes:
      data: the n_s + n_t fitting points (source first).
      components: W (n, m), the transfer components, normalised to W^T K H K W = I.
      eigenvalues: the m leading generalised eigenvalues, descending.
      kernel, gamma: the kernel used.
      n_source: number of source points in ``data``.
    """

    data: jax.Array
    components: jax.Array
    eigenvalues: jax.Array
    kernel: Kernel
    gamma: float | None
    n_source: int

    def transform(self, x: jax.Array) -> jax.Array:
        """Embeds any features (fitting points or new ones): k(x, data) W."""
        return kernel_matrix(jnp.asarray(x), self.data, self.kernel, self.gamma) @ self.components

    @property
    def source_embedding(self) -> jax.Array:
        """Z of the source fitting points."""
        return self.transform(self.data[: self.n_source])

    @property
    def target_embedding(self) -> jax.Array:
        """Z of the target fitting points."""
        return self.transform(self.data[self.n_source :])


def tca(
    source: jax.Array,
    target: jax.Array,
    num_components: int,
    *,
    mu: float = 1.0,
    kernel: Kernel = "linear",
    gamma: float | None = None,
    scaling: Scaling = "constraint",
) -> TCA:
    """Fits TCA on ``source`` (n_s, d) and ``target`` (n_t, d) features.

    Args:
      source, target: feature arrays of both domains (same d).
      num_components: m, the embedding width (at most the rank of K H K: e.g. <= d for the
        linear kernel).
      mu: the trade-off (regulariser) of the trace objective, > 0.
      kernel: ``"linear"`` or ``"rbf"``.
      gamma: RBF width (default 1/d).
      scaling: ``"constraint"`` (the paper's W^T K H K W = I) or ``"unit"`` (each column of W
        of unit norm; see the module docstring).

    Returns:
      the fit, with ``data``, ``components`` and ``eigenvalues`` in the inputs' floating
      dtype (float32 unless float64 is enabled), computed in float64.

    Raises:
      TransferError: for mismatched widths, mu <= 0, a bad kernel or scaling, or ``num_components``
        outside [1, n] or above the numerical rank of K H K (the constraint
        W^T K H K W = I then has no solution).
    """
    source, target = _check_features(source, "tca"), _check_features(target, "tca")
    if source.shape[1] != target.shape[1]:
        raise TransferError(f"tca: feature widths differ: {source.shape[1]} vs {target.shape[1]}")
    if mu <= 0:
        raise TransferError(f"tca: mu must be > 0, got {mu}")
    if scaling not in ("constraint", "unit"):
        raise TransferError(f"tca: unknown scaling {scaling!r}; valid: constraint, unit")
    dtype = jnp.promote_types(jnp.result_type(source, target), jnp.float32)
    x = np.concatenate([np.asarray(source, np.float64), np.asarray(target, np.float64)])
    n = x.shape[0]
    if not 1 <= num_components <= n:
        raise TransferError(f"tca: num_components must be in [1, {n}], got {num_components}")
    k = _kernel(x, x, kernel, gamma, np)
    hk = k - k.mean(0)  # H K
    a = hk.T @ hk  # K H K (H is symmetric and idempotent)
    ke = k @ _mmd_vector(source.shape[0], target.shape[0], np)
    b = np.outer(ke, ke) + mu * np.eye(n)  # K L K + mu I, L = e e^T
    vals, vecs = scipy.linalg.eigh(a, b, subset_by_index=[n - num_components, n - 1])  # w^T b w = 1
    vals, vecs = vals[::-1], vecs[:, ::-1]
    # b >= mu I, so a zero eigenvalue of K H K shows up as rounding of order eps ||a|| / mu
    rank_tol = n * np.finfo(np.float64).eps * float(np.max(np.abs(a))) / mu
    if vals[-1] <= rank_tol:
        rank = int(np.sum(scipy.linalg.eigvalsh(a, b) > rank_tol))
        raise TransferError(
            f"tca: num_components={num_components} exceeds the rank of K H K ({rank}) for these features and kernel; "
            f"use num_components <= {rank}"
        )
    if scaling == "constraint":
        w = vecs / np.sqrt(vals)  # w^T (K H K) w = lambda w^T b w / lambda = 1
    else:
        w = vecs / np.linalg.norm(vecs, axis=0)
    return TCA(jnp.asarray(x, dtype), jnp.asarray(w, dtype), jnp.asarray(vals, dtype), kernel, gamma, source.shape[0])


def linear_mmd(a: jax.Array, b: jax.Array) -> jax.Array:
    """||mean(a) - mean(b)||^2: the linear-kernel squared MMD between two feature sets."""
    return jnp.sum((jnp.mean(a, 0) - jnp.mean(b, 0)) ** 2)


def coral_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """||Cov(a) - Cov(b)||_F^2 / (4 d^2): the CORAL distance (Sun & Saenko, ECCV-W 2016, eq. 1)."""
    d = a.shape[1]
    return jnp.sum((jnp.cov(a, rowvar=False) - jnp.cov(b, rowvar=False)) ** 2) / (4.0 * d * d)


def _spd_power(c: np.ndarray, power: float, name: str) -> np.ndarray:
    """c^power for a symmetric positive-definite float64 matrix, via its eigendecomposition."""
    vals, vecs = np.linalg.eigh(c)
    if vals[-1] <= 0 or vals[0] <= len(c) * np.finfo(np.float64).eps * float(vals[-1]):
        raise TransferError(
            f"coral: the {name} covariance is singular (smallest eigenvalue {vals[0]:.3g}); use regularizer > 0 "
            f"(the paper's 1.0) or more samples than features"
        )
    return (vecs * vals**power) @ vecs.T


@dataclasses.dataclass(frozen=True)
class CORAL:
    """A fitted CORAL map (Sun, Feng & Saenko 2016, Algorithm 1).

    Attributes:
      transform: A = (cov(D_S) + lambda I)^{-1/2} (cov(D_T) + lambda I)^{1/2}, (d, d).
      regularizer: lambda.
    """

    transform: jax.Array
    regularizer: float

    def transform_source(self, x: jax.Array) -> jax.Array:
        """Whitened-and-recoloured source features x A."""
        return jnp.asarray(x) @ self.transform

    def transform_target(self, x: jax.Array) -> jax.Array:
        """Target features, unchanged (CORAL maps the source only)."""
        return jnp.asarray(x)


def coral(source: jax.Array, target: jax.Array, *, regularizer: float = 1.0) -> CORAL:
    """Fits CORAL of ``source`` (n_s, d) onto ``target`` (n_t, d) features.

    Args:
      source, target: feature arrays of both domains (same d).
      regularizer: lambda >= 0 added to both covariances (Algorithm 1 uses 1); 0 gives the
        exact second-order match cov(D_S A) = cov(D_T) but needs full-rank covariances.

    Returns:
      the fit, with ``transform`` in the inputs' floating dtype (float32 unless float64 is
      enabled), computed in float64.

    Raises:
      TransferError: for mismatched widths, regularizer < 0, or a singular covariance.
    """
    source, target = _check_features(source, "coral"), _check_features(target, "coral")
    if source.shape[1] != target.shape[1]:
        raise TransferError(f"coral: feature widths differ: {source.shape[1]} vs {target.shape[1]}")
    if regularizer < 0:
        raise TransferError(f"coral: regularizer must be >= 0, got {regularizer}")
    dtype = jnp.promote_types(jnp.result_type(source, target), jnp.float32)
    eye = regularizer * np.eye(source.shape[1])
    cs = np.cov(np.asarray(source, np.float64), rowvar=False) + eye
    ct = np.cov(np.asarray(target, np.float64), rowvar=False) + eye
    a = _spd_power(cs, -0.5, "source") @ _spd_power(ct, 0.5, "target")
    return CORAL(jnp.asarray(a, dtype), float(regularizer))
