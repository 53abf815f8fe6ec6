"""Fine-tuning regularisers: stay close to the starting model, or shrink untransferable directions.

* L2-SP: Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with
  Convolutional Networks", ICML 2018:
  Omega(w) = alpha/2 ||w_S - w_S^0||^2 + beta/2 ||w_new||^2, where w_S are the parameters
  shared with the starting point w^0 and w_new the new ones (here the classifier head).
* DELTA-style feature-map regularisation: Li, Xiong, Wang, Huan, Liu & Xu, "DELTA: Deep
  Learning Transfer using Feature Map with Attention for Convolutional Networks", ICLR 2019:
  Omega = mean_i sum_j W_ij ||FM_j(w, x_i) - FM_j(w^0, x_i)||^2  over channels j,
  with uniform W (``attention="none"``) or DELTA's supervised attention (``"head"``): W_i. =
  softmax_j of the increase in the anchor model's loss on (x_i, y_i) when channel j of the
  feature layer is removed.  The anchor features carry no gradient.
* Batch spectral shrinkage (BSS): Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets
  Negative Transfer: Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019:
  L_bss = sum_{i=1}^{k} sigma_{-i}^2, the k smallest squared singular values of the
  (n, d) feature matrix.

The registered terms ``l2sp`` and ``delta`` keep the starting model (the initial, or
transferred, parameters) as their state (:func:`anchored_term`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.checks import check_batch, compute_dtype
from da_framework.losses.registry import (
    LossError,
    LossInputs,
    StatefulTerm,
    TermState,
    register_loss,
    register_stateful_loss,
)


def _sq_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(jnp.asarray(x, compute_dtype(x)) ** 2) for x in leaves), jnp.zeros((), jnp.float32))


def l2_sp(
    params: Mapping[str, Any],
    anchor_params: Mapping[str, Any],
    new_modules: Sequence[str] = ("head",),
    alpha: float = 0.01,
    beta: float = 0.01,
) -> jax.Array:
    """L2-SP: alpha/2 ||w_shared - w0_shared||^2 + beta/2 ||w_new||^2 (Li et al. 2018).

    Args:
      params: the current parameters, a dict of top-level modules (``backbone``, ``head``, ...).
      anchor_params: the starting point w^0 with the same structure.
      new_modules: top-level names whose parameters are new (plain L2 towards 0, no anchor).
      alpha: weight of the pull of the shared parameters towards w^0.
      beta: weight of the L2 penalty on the new parameters.

    Returns:
      the scalar penalty in float32 (float64 parameters stay float64); zero at w = w^0 with
      beta = 0.

    Raises:
      LossError: if a new module is missing or the two parameter trees differ in structure.
    """
    missing = [m for m in new_modules if m not in params]
    if missing:
        raise LossError(f"l2_sp: new module(s) {missing} not in the parameters; top-level names: {sorted(params)}")
    shared = {k: v for k, v in params.items() if k not in new_modules}
    shared_anchor = {k: anchor_params[k] for k in shared if k in anchor_params}
    if jax.tree.structure(shared) != jax.tree.structure(shared_anchor):
        raise LossError(
            "l2_sp: the anchor parameters' structure differs from the model's shared parameters; "
            "the anchor must be a copy of the same model (the term's init stores it)"
        )
    diff = jax.tree.map(lambda w, w0: w - jax.lax.stop_gradient(w0), shared, shared_anchor)
    new = {k: params[k] for k in new_modules}
    return 0.5 * alpha * _sq_norm(diff) + 0.5 * beta * _sq_norm(new)


def feature_map_distance(
    features: jax.Array, anchor_features: jax.Array, channel_weights: jax.Array | None = None
) -> jax.Array:
    """DELTA's feature-map distance mean_i sum_j W_ij ||f_ij - f0_ij||^2 (Li et al. 2019).

    Args:
      features: (n, ..., c) features of the current model; j runs over the last axis
        (channels), the squared norm over the axes in between (spatial positions).
      anchor_features: the same shape, from the starting model; no gradient flows into them.
      channel_weights: None for uniform weights 1, or (c,) or (n, c) non-negative weights.

    Returns:
      the scalar distance in float32 (float64 inputs stay float64).

    Raises:
      LossError: for shape mismatches, rank < 2 or an empty batch.
    """
    if features.ndim < 2 or features.shape != anchor_features.shape:
        raise LossError(
            f"feature_map_distance: expected current and anchor features of the same shape (n, ..., c), "
            f"got {features.shape} and {anchor_features.shape}"
        )
    if features.shape[0] == 0:
        raise LossError(f"feature_map_distance: empty batch (shape {features.shape})")
    dtype = compute_dtype(features)
    diff = features.astype(dtype) - jax.lax.stop_gradient(anchor_features.astype(dtype))
    n, c = features.shape[0], features.shape[-1]
    per_channel = jnp.sum(diff.reshape(n, -1, c) ** 2, axis=1)  # (n, c)
    if channel_weights is not None:
        w = jnp.asarray(channel_weights, dtype)
        if w.shape not in ((c,), (n, c)):
            raise LossError(
                f"feature_map_distance: channel_weights must have shape ({c},) or ({n}, {c}), got {w.shape}"
            )
        per_channel = per_channel * jax.lax.stop_gradient(w)
    return jnp.mean(jnp.sum(per_channel, axis=1))


def delta_attention(
    anchor_features: jax.Array, head_kernel: jax.Array, head_bias: jax.Array, labels: jax.Array
) -> jax.Array:
    """DELTA's supervised channel attention for a linear head (Li et al. 2019).

    W_i. = softmax_j( CE(head(f0_i with channel j zeroed), y_i) - CE(head(f0_i), y_i) ).

    Args:
      anchor_features: (n, c) features of the starting model.
      head_kernel: (c, k) and head_bias: (k,) of the starting model's linear head.
      labels: (n,) integer labels.

    Returns:
      (n, c) weights, each row summing to 1, without gradient.
    """
    dtype = compute_dtype(anchor_features)
    f = anchor_features.astype(dtype)
    kernel, bias = head_kernel.astype(dtype), head_bias.astype(dtype)
    if f.ndim != 2 or kernel.shape[0] != f.shape[1] or labels.shape != f.shape[:1]:
        raise LossError(
            f"delta_attention: expected features (n, c), head kernel (c, k) and labels (n,), got "
            f"{f.shape}, {kernel.shape} and {labels.shape}"
        )
    logits = f @ kernel + bias  # (n, k)
    dropped = logits[:, None, :] - f[:, :, None] * kernel[None, :, :]  # (n, c, k): channel j removed
    base = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # (n,)
    without = optax.softmax_cross_entropy_with_integer_labels(
        dropped, jnp.broadcast_to(labels[:, None], dropped.shape[:2])
    )  # (n, c)
    return jax.lax.stop_gradient(jax.nn.softmax(without - base[:, None], axis=-1))


def batch_spectral_shrinkage(features: jax.Array, k: int = 1) -> jax.Array:
    """BSS: the sum of the k smallest squared singular values of a feature batch (Chen et al. 2019).

    Args:
      features: (n, d) features.
      k: how many of the min(n, d) singular values to shrink, 1 <= k <= min(n, d).

    Returns:
      the scalar penalty >= 0 in float32 (float64 inputs stay float64); invariant to the
      order of examples.

    Raises:
      LossError: for a non-2-D or empty batch, or k out of range.
    """
    check_batch(features, "batch_spectral_shrinkage")
    rank = min(features.shape)
    if int(k) != k or not 1 <= k <= rank:
        raise LossError(
            f"batch_spectral_shrinkage: k must be an integer in [1, min(n, d)] = [1, {rank}] for "
            f"features {features.shape}, got {k!r}"
        )
    sigma = jnp.linalg.svd(features.astype(compute_dtype(features)), compute_uv=False)  # descending
    return jnp.sum(sigma[rank - int(k) :] ** 2)


def anchored_term(loss: Callable[[LossInputs, Any], jax.Array]) -> StatefulTerm:
    """A stateful term whose state is the model's parameters at the start of training (the anchor).

    Args:
      loss: ``loss(inputs, anchor) -> scalar`` of the step's inputs and the anchor parameters.
    """

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        del key
        if inputs.params is None:
            raise LossError("an anchored term needs the model parameters at init (inputs.params); use it through a Method")
        return TermState(state=inputs.params)

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        return loss(inputs, term_state.state), term_state.state, {}

    return StatefulTerm(init, apply)


@register_stateful_loss(
    "l2sp",
    description="pull shared weights towards the starting weights, L2 on the new head (L2-SP)",
    reference="Li et al., 'Explicit Inductive Bias for Transfer Learning with Convolutional Networks', ICML 2018",
)
def l2sp_term(alpha: float = 0.01, beta: float = 0.01, new: str = "head") -> StatefulTerm:
    """L2-SP of the current parameters to the anchor; ``new`` names the new top-level modules, '|'-separated."""

    def loss(inputs: LossInputs, anchor: Any) -> jax.Array:
        if inputs.params is None:
            raise LossError("l2sp: needs inputs.params (set by the train step)")
        return l2_sp(inputs.params, anchor, tuple(new.split("|")), alpha, beta)

    return anchored_term(loss)


@register_stateful_loss(
    "delta",
    description="distance of source features to the starting model's features (DELTA)",
    reference="Li et al., 'DELTA: Deep Learning Transfer using Feature Map with Attention for "
    "Convolutional Networks', ICLR 2019",
)
def delta_term(attention: str = "none") -> StatefulTerm:
    """Feature-map distance to the anchor on the source batch; ``attention`` is ``"none"`` or ``"head"`` (DELTA's)."""
    if attention not in ("none", "head"):
        raise LossError(f"delta: unknown attention {attention!r}; valid: 'none', 'head'")

    def loss(inputs: LossInputs, anchor: Any) -> jax.Array:
        if inputs.apply_model is None or inputs.source_inputs is None:
            raise LossError("delta: needs inputs.apply_model and inputs.source_inputs (set by the train step)")
        anchor = jax.lax.stop_gradient(anchor)
        _, anchor_features = inputs.apply_model(anchor, inputs.source_inputs, train=False)
        weights = None
        if attention == "head":
            head = anchor.get("head", {}) if isinstance(anchor, Mapping) else {}
            if "kernel" not in head or "bias" not in head:
                raise LossError("delta: attention='head' needs a linear head with 'kernel' and 'bias' under params['head']")
            weights = delta_attention(anchor_features, head["kernel"], head["bias"], inputs.source_labels)
        return feature_map_distance(inputs.source_features, anchor_features, weights)

    return anchored_term(loss)


@register_loss(
    "bss",
    description="shrink the k smallest singular values of the source feature batch (BSS)",
    reference="Chen et al., 'Catastrophic Forgetting Meets Negative Transfer: Batch Spectral Shrinkage "
    "for Safe Transfer Learning', NeurIPS 2019",
)
def bss_term(inputs: LossInputs, k: int = 1, domain: str = "source") -> jax.Array:
    """BSS on the ``"source"`` (default), ``"target"`` or ``"both"`` feature batches (summed for both)."""
    if domain not in ("source", "target", "both"):
        raise LossError(f"bss: unknown domain {domain!r}; valid: 'source', 'target', 'both'")
    total = jnp.zeros((), jnp.float32)
    if domain in ("source", "both"):
        total = total + batch_spectral_shrinkage(inputs.source_features, k)
    if domain in ("target", "both"):
        total = total + batch_spectral_shrinkage(inputs.target_features, k)
    return total
