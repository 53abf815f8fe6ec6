"""Joint maximum mean discrepancy over several layers (JAN).

Long, Zhu, Wang & Jordan, "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017.
For layers l = 1..L with per-layer kernels k^l, the joint kernel is the product
k(z, z') = prod_l k^l(z^l, z'^l), and

    JMMD^2(S, T) = mean_{i,j} k(s_i, s_j) + mean_{i,j} k(t_i, t_j) - 2 mean_{i,j} k(s_i, t_j)

(biased V-statistic; the unbiased one drops the i = j terms within each domain, as in
:func:`da_framework.losses.mmd.mk_mmd`).  Each per-layer kernel is a Gaussian multi-kernel
(mean over bandwidth multipliers ``alphas``) whose base squared bandwidth is either fixed or,
by default, the mean pairwise squared distance of that layer's joint batch (stop-gradient).

The registered term ``jan`` uses JAN's two layers: the adaptation features (multi-kernel,
adaptive bandwidth) and the softmax of the logits (a single Gaussian kernel with fixed
sigma = 0.92, i.e. 2 sigma^2 ~ 1.69, the value Transfer-Learning-Library uses).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from da_framework.losses.checks import check_feature_pair, compute_dtype
from da_framework.losses.mmd import DEFAULT_ALPHAS, multi_kernel_matrix, pairwise_sq_distances
from da_framework.losses.registry import LossError, LossInputs, register_loss

SOFTMAX_SIGMA: float = 0.92


def joint_mmd(
    source_layers: Sequence[jax.Array],
    target_layers: Sequence[jax.Array],
    alphas: Sequence[Sequence[float]] | None = None,
    sq_scales: Sequence[float | None] | None = None,
    estimator: str = "biased",
) -> jax.Array:
    """Squared joint MMD between source and target activations of several layers (JAN).

    Args:
      source_layers: L arrays of shape (n, d_l), the same n for every layer.
      target_layers: L arrays of shape (m, d_l), matching ``source_layers`` layer by layer.
      alphas: per layer, the bandwidth multipliers of its multi-kernel; None uses
        :data:`DEFAULT_ALPHAS` for every layer.
      sq_scales: per layer, a fixed base squared bandwidth or None for the adaptive one
        (mean pairwise squared distance of the layer's joint batch, without gradient).
      estimator: ``"biased"`` (>= 0) or ``"unbiased"`` (needs n, m >= 2).

    Returns:
      the scalar JMMD^2 estimate, computed in float32 (float64 inputs stay float64).

    Raises:
      LossError: for no layers, mismatched layer counts, widths or batch sizes, or an
        unknown estimator.
    """
    n_layers = len(source_layers)
    if n_layers == 0 or len(target_layers) != n_layers:
        raise LossError(
            f"joint_mmd: needs the same non-zero number of source and target layers, got "
            f"{n_layers} and {len(target_layers)}"
        )
    alphas = [DEFAULT_ALPHAS] * n_layers if alphas is None else list(alphas)
    sq_scales = [None] * n_layers if sq_scales is None else list(sq_scales)
    if len(alphas) != n_layers or len(sq_scales) != n_layers:
        raise LossError(f"joint_mmd: give one alphas and one sq_scale per layer ({n_layers} layers)")
    if estimator not in ("biased", "unbiased"):
        raise LossError(f"joint_mmd: unknown estimator {estimator!r}; valid: 'biased', 'unbiased'")
    for layer, (s, t) in enumerate(zip(source_layers, target_layers)):
        check_feature_pair(s, t, f"joint_mmd (layer {layer})")
        if s.shape[0] != source_layers[0].shape[0] or t.shape[0] != target_layers[0].shape[0]:
            raise LossError(
                f"joint_mmd: layer {layer} has batch sizes {s.shape[0]}/{t.shape[0]} but layer 0 has "
                f"{source_layers[0].shape[0]}/{target_layers[0].shape[0]}; all layers must see the same examples"
            )
    n, m = source_layers[0].shape[0], target_layers[0].shape[0]
    if estimator == "unbiased" and (n < 2 or m < 2):
        raise LossError(f"joint_mmd: the unbiased estimator needs >= 2 examples per domain, got {n} and {m}")

    k_joint = None
    for s, t, layer_alphas, scale in zip(source_layers, target_layers, alphas, sq_scales):
        dtype = compute_dtype(s)
        z = jnp.concatenate([s.astype(dtype), t.astype(dtype)])
        if scale is None:
            n_z = z.shape[0]
            scale = jax.lax.stop_gradient(jnp.sum(pairwise_sq_distances(z, z)) / max(n_z * (n_z - 1), 1))
        scale = jnp.maximum(jnp.asarray(scale, dtype), 1e-12)
        k = multi_kernel_matrix(z, z, scale, layer_alphas)
        k_joint = k if k_joint is None else k_joint * k
    k_ss, k_tt, k_st = k_joint[:n, :n], k_joint[n:, n:], k_joint[:n, n:]
    if estimator == "biased":
        return jnp.mean(k_ss) + jnp.mean(k_tt) - 2.0 * jnp.mean(k_st)
    within_s = (jnp.sum(k_ss) - jnp.trace(k_ss)) / (n * (n - 1))
    within_t = (jnp.sum(k_tt) - jnp.trace(k_tt)) / (m * (m - 1))
    return within_s + within_t - 2.0 * jnp.mean(k_st)


@register_loss(
    "jan",
    description="joint MMD^2 over features and softmax predictions (JAN)",
    reference="Long et al., 'Deep Transfer Learning with Joint Adaptation Networks', ICML 2017",
)
def jan_term(inputs: LossInputs, estimator: str = "biased", softmax_sigma: float = SOFTMAX_SIGMA) -> jax.Array:
    """JMMD between (features, softmax(logits)) of the source and target batches."""
    ps = jax.nn.softmax(inputs.source_logits.astype(jnp.float32), axis=-1)
    pt = jax.nn.softmax(inputs.target_logits.astype(jnp.float32), axis=-1)
    return joint_mmd(
        (inputs.source_features, ps),
        (inputs.target_features, pt),
        alphas=(DEFAULT_ALPHAS, (1.0,)),
        sq_scales=(None, softmax_sigma**2),
        estimator=estimator,
    )
