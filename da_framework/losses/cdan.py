"""Conditional domain-adversarial networks: CDAN and CDAN+E.

Long, Cao, Wang & Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018.

The domain discriminator D sees the features f *conditioned on* the classifier's softmax
predictions g (treated as constants, as in the authors' code), through a multilinear map:

* Eq. (4), multilinear map:  T_x(f, g) = f (x) g = vec(f g^T), a (d k)-vector;
* Eq. (5), randomized map for large d k:  T_o(f, g) = (R_f f) * (R_g g) / sqrt(m), with fixed
  random Gaussian matrices R_f (m, d), R_g (m, k) drawn once; its inner products are unbiased
  estimates of those of T_x.  The paper switches to it when d k > 4096 (default m = 1024).

The adversarial loss is DANN's (:mod:`da_framework.losses.adversarial`) on the conditioned
vectors, through a gradient reversal layer whose strength follows the DANN ramp.  CDAN+E
(Eq. 8) weighs every example by its certainty w = 1 + exp(-H(g)), normalised to sum 1 within
each domain (stop-gradient), so that easy-to-transfer examples dominate the alignment.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.adversarial import DomainDiscriminator, dann_ramp, gradient_reversal
from da_framework.losses.checks import check_batch, check_feature_pair, compute_dtype
from da_framework.losses.entropy import prediction_entropy
from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, register_stateful_loss

RANDOMIZED_THRESHOLD = 4096
"""Use the randomized map when d * k exceeds this (Long et al. 2018, Sec. 3.2)."""


def multilinear_map(features: jax.Array, predictions: jax.Array) -> jax.Array:
    """The multilinear map f (x) g of Long et al. 2018, Eq. (4).

    Args:
      features: (n, d) features f.
      predictions: (n, k) class predictions g (softmax probabilities).

    Returns:
      (n, d * k) row-wise flattened outer products; entry [i, a * k + b] = f_ia g_ib.
    """
    _check_map_inputs(features, predictions, "multilinear_map")
    n = features.shape[0]
    return jnp.reshape(features[:, :, None] * predictions[:, None, :], (n, -1))


def random_matrices(
    key: jax.Array, feature_dim: int, num_classes: int, output_dim: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """The fixed Gaussian matrices (R_f, R_g) of the randomized multilinear map.

    Args:
      key: PRNG key; the same key gives the same map for the whole run.
      feature_dim: d.
      num_classes: k.
      output_dim: m, the width of the randomized map's output.

    Returns:
      R_f of shape (d, m) and R_g of shape (k, m), standard normal entries (float32).
    """
    if output_dim < 1:
        raise LossError(f"random_matrices: output_dim must be >= 1, got {output_dim}")
    k_f, k_g = jax.random.split(key)
    return (
        jax.random.normal(k_f, (feature_dim, output_dim), jnp.float32),
        jax.random.normal(k_g, (num_classes, output_dim), jnp.float32),
    )


def randomized_multilinear_map(
    features: jax.Array, predictions: jax.Array, r_f: jax.Array, r_g: jax.Array
) -> jax.Array:
    """The randomized multilinear map of Long et al. 2018, Eq. (5).

    Args:
      features: (n, d) features f.
      predictions: (n, k) class predictions g.
      r_f: (d, m) fixed random matrix (:func:`random_matrices`).
      r_g: (k, m) fixed random matrix.

    Returns:
      (n, m) array (f R_f) * (g R_g) / sqrt(m).
    """
    _check_map_inputs(features, predictions, "randomized_multilinear_map")
    if r_f.shape[0] != features.shape[1] or r_g.shape[0] != predictions.shape[1] or r_f.shape[1] != r_g.shape[1]:
        raise LossError(
            f"randomized_multilinear_map: random matrices {r_f.shape} and {r_g.shape} do not fit features "
            f"{features.shape} and predictions {predictions.shape}; draw them with random_matrices(key, d, k, m)"
        )
    dtype = compute_dtype(features)
    m = r_f.shape[1]
    projected_f = features.astype(dtype) @ r_f.astype(dtype)
    return projected_f * (predictions.astype(dtype) @ r_g.astype(dtype)) / math.sqrt(m)


def entropy_weights(logits: jax.Array) -> jax.Array:
    """CDAN+E certainty weights w = 1 + exp(-H(softmax(logits))), normalised to sum to 1.

    Long et al. 2018, Eq. (8).  Apply per domain; the result carries no gradient.

    Args:
      logits: (n, k) classifier logits of one domain's batch.

    Returns:
      (n,) non-negative weights summing to 1.
    """
    check_batch(logits, "entropy_weights", "classes")
    w = 1.0 + jnp.exp(-prediction_entropy(jax.lax.stop_gradient(logits)))
    return w / jnp.sum(w)


def weighted_domain_adversarial_loss(
    source_domain_logits: jax.Array,
    target_domain_logits: jax.Array,
    source_weights: jax.Array | None = None,
    target_weights: jax.Array | None = None,
) -> jax.Array:
    """Weighted binary cross-entropy of a domain classifier (source 1, target 0).

    Args:
      source_domain_logits: (n_s,) discriminator logits on source examples.
      target_domain_logits: (n_t,) discriminator logits on target examples.
      source_weights, target_weights: per-example weights summing to 1 within each domain
        (:func:`entropy_weights`); None means uniform (then this is DANN's loss).

    Returns:
      0.5 * (sum_i w_s,i BCE(d_s,i, 1) + sum_j w_t,j BCE(d_t,j, 0)).
    """
    s = jnp.reshape(source_domain_logits, (-1,)).astype(jnp.float32)
    t = jnp.reshape(target_domain_logits, (-1,)).astype(jnp.float32)
    if s.shape[0] == 0 or t.shape[0] == 0:
        raise LossError("weighted_domain_adversarial_loss: empty batch")
    ws = jnp.full(s.shape, 1.0 / s.shape[0]) if source_weights is None else source_weights
    wt = jnp.full(t.shape, 1.0 / t.shape[0]) if target_weights is None else target_weights
    loss_s = jnp.sum(ws * optax.sigmoid_binary_cross_entropy(s, jnp.ones_like(s)))
    loss_t = jnp.sum(wt * optax.sigmoid_binary_cross_entropy(t, jnp.zeros_like(t)))
    return 0.5 * (loss_s + loss_t)


def conditional_features(
    features: jax.Array,
    logits: jax.Array,
    randomized: bool | None = None,
    threshold: int = RANDOMIZED_THRESHOLD,
    random_dim: int = 1024,
    map_key: jax.Array | None = None,
) -> jax.Array:
    """CDAN's discriminator input: features conditioned on (stop-gradient) softmax predictions.

    Args:
      features: (n, d) features.
      logits: (n, k) classifier logits; their softmax is used without gradient.
      randomized: force the randomized (True) or full (False) map; None picks the randomized
        one when d * k > ``threshold`` (as in the paper).
      threshold: the d * k above which ``randomized=None`` picks the randomized map.
      random_dim: m, output width of the randomized map.
      map_key: key of the fixed random matrices (default ``jax.random.key(0)``); keep it the
        same for the whole run.

    Returns:
      (n, d k) or (n, m) conditioned vectors.
    """
    g = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
    d, k = features.shape[1], logits.shape[1]
    if randomized is None:
        randomized = d * k > threshold
    if not randomized:
        return multilinear_map(features, g.astype(features.dtype))
    r_f, r_g = random_matrices(jax.random.key(0) if map_key is None else map_key, d, k, random_dim)
    return randomized_multilinear_map(features, g, r_f, r_g)


def _check_map_inputs(features: jax.Array, predictions: jax.Array, loss: str) -> None:
    check_batch(features, loss, "features")
    check_batch(predictions, loss, "classes")
    if features.shape[0] != predictions.shape[0]:
        raise LossError(
            f"{loss}: features {features.shape} and predictions {predictions.shape} have different batch "
            "sizes; pass the predictions of the same examples"
        )


def _parse_randomized(value: bool | str | None) -> bool | None:
    if value in (None, "auto"):
        return None
    if isinstance(value, bool):
        return value
    raise LossError(f"cdan: randomized must be True, False or 'auto', got {value!r}")


def _cdan(entropy: bool, name: str, **hp: Any) -> StatefulTerm:
    """CDAN's term: a domain discriminator (the term's parameters) on conditioned, reversed features."""
    discriminator = DomainDiscriminator()
    randomized = _parse_randomized(hp["randomized"])

    def conditioned(inputs: LossInputs) -> jax.Array:
        feats = jnp.concatenate([inputs.source_features, inputs.target_features])
        logits = jnp.concatenate([inputs.source_logits, inputs.target_logits])
        return conditional_features(
            feats,
            logits,
            randomized=randomized,
            threshold=hp["threshold"],
            random_dim=hp["random_dim"],
            map_key=jax.random.key(hp["map_seed"]),
        )

    def init(key: jax.Array, inputs: LossInputs) -> TermState:
        return TermState(params=discriminator.init(key, conditioned(inputs))["params"])

    def apply(term_state: TermState, inputs: LossInputs) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        check_feature_pair(inputs.source_features, inputs.target_features, name)
        check_feature_pair(inputs.source_logits, inputs.target_logits, name)
        n_s = inputs.source_features.shape[0]
        coeff = hp["max_coeff"] * dann_ramp(inputs.progress, hp["gamma"])
        d_logits = discriminator.apply({"params": term_state.params}, gradient_reversal(conditioned(inputs), coeff))
        ws = wt = None
        if entropy:
            ws, wt = entropy_weights(inputs.source_logits), entropy_weights(inputs.target_logits)
        return weighted_domain_adversarial_loss(d_logits[:n_s], d_logits[n_s:], ws, wt), term_state.state, {}

    return StatefulTerm(init, apply)


@register_stateful_loss(
    "cdan",
    description="conditional domain-adversarial loss on the multilinear map f (x) softmax(g) (CDAN)",
    reference="Long et al., 'Conditional Adversarial Domain Adaptation', NeurIPS 2018",
)
def cdan_term(
    gamma: float = 10.0,
    max_coeff: float = 1.0,
    randomized: bool | str = "auto",
    threshold: int = RANDOMIZED_THRESHOLD,
    random_dim: int = 1024,
    map_seed: int = 0,
) -> StatefulTerm:
    """CDAN (Eq. 6-7): DANN's loss on multilinear-conditioned, gradient-reversed features."""
    hp = dict(gamma=gamma, max_coeff=max_coeff, randomized=randomized, threshold=threshold, random_dim=random_dim)
    return _cdan(False, "cdan", map_seed=map_seed, **hp)


@register_stateful_loss(
    "cdan_e",
    description="CDAN with entropy conditioning: examples weighted by 1 + exp(-H(g)) (CDAN+E)",
    reference="Long et al., 'Conditional Adversarial Domain Adaptation', NeurIPS 2018",
)
def cdan_e_term(
    gamma: float = 10.0,
    max_coeff: float = 1.0,
    randomized: bool | str = "auto",
    threshold: int = RANDOMIZED_THRESHOLD,
    random_dim: int = 1024,
    map_seed: int = 0,
) -> StatefulTerm:
    """CDAN+E (Eq. 8): CDAN with per-domain normalised certainty weights."""
    hp = dict(gamma=gamma, max_coeff=max_coeff, randomized=randomized, threshold=threshold, random_dim=random_dim)
    return _cdan(True, "cdan_e", map_seed=map_seed, **hp)
