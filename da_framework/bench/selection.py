"""Model selection: validators that score a trained model, and picking the best run by one.

Unsupervised domain adaptation has no labelled target data, so *which* checkpoint or
hyper-parameter a published number comes from is decided by a validator.  Validators here
(``VALIDATORS``), all pure NumPy functions of a run's predictions:

* ``source_val_accuracy``: accuracy on held-out labelled source data.
* ``target_oracle_accuracy``: accuracy on labelled target test data -- an ORACLE, it reads
  target labels that UDA forbids; reported only as an upper bound of selection.
* ``iwcv_risk`` -- importance-weighted cross-validation, Sugiyama, Krauledat & Mueller,
  "Covariate Shift Adaptation by Importance Weighted Cross Validation", JMLR 8, 2007
  (eq. 8): the source-validation loss weighted by the density ratio w(x) = p_t(x)/p_s(x).
* ``dev_risk`` -- deep embedded validation, You, Wang, Chen, Long & Wang, "Towards Accurate
  Model Selection in Deep Unsupervised Domain Adaptation", ICML 2019 (Algorithm 1): IWCV
  with the weights as a control variate to reduce its variance.
* ``target_entropy``: mean entropy of target predictions (lower is more confident).
* ``snd`` -- soft neighbourhood density, Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko,
  "Tune it the Right Way: Unsupervised Validation of Domain Adaptation via Soft
  Neighborhood Density", ICCV 2021 (eqs. 1-3): entropy of the softmax over similarities
  of L2-normalised target prediction vectors (higher is better).

The density ratio comes from a domain classifier (:func:`density_ratio_weights`, logistic
regression on features, out-of-fold probabilities), as in DEV.

The headline tables of ``da report`` select by ``source_val_accuracy`` unless told
otherwise (``--select``); the side-by-side table shows every validator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from da_framework.errors import UserError


@dataclasses.dataclass(frozen=True)
class Validator:
    """A model-selection criterion.

    Attributes:
      key: the name of its score in a run record's ``"selection"`` dict.
      higher_is_better: whether larger scores mean better models.
      uses_target_labels: True for oracles (not valid UDA model selection).
      description: one line for reports.
    """

    key: str
    higher_is_better: bool
    uses_target_labels: bool
    description: str


VALIDATORS: dict[str, Validator] = {
    v.key: v
    for v in (
        Validator("source_val_accuracy", True, False, "source validation accuracy"),
        Validator("target_oracle_accuracy", True, True, "target test accuracy (ORACLE: uses target labels)"),
        Validator("iwcv_risk", False, False, "importance-weighted source-val loss (Sugiyama et al. 2007)"),
        Validator("dev_risk", False, False, "deep embedded validation (You et al. 2019)"),
        Validator("target_entropy", False, False, "mean entropy of target predictions"),
        Validator("snd", True, False, "soft neighbourhood density (Saito et al. 2021)"),
    )
}
DEFAULT_VALIDATOR = "source_val_accuracy"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def cross_entropy_per_example(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example negative log-likelihood ``-log softmax(logits)[label]`` (float64)."""
    z = np.asarray(logits, np.float64)
    m = z.max(-1, keepdims=True)
    log_z = np.log(np.exp(z - m).sum(-1)) + m[:, 0]
    return log_z - z[np.arange(len(z)), np.asarray(labels)]


def prediction_entropy(logits: np.ndarray) -> float:
    """Mean Shannon entropy (nats) of the softmax predictions."""
    p = softmax(logits)
    return float(-np.mean(np.sum(p * np.log(np.clip(p, 1e-300, None)), -1)))


def soft_neighborhood_density(logits: np.ndarray, temperature: float = 0.05) -> float:
    """SND of Saito et al. (ICCV 2021): mean entropy of the soft-neighbour distributions.

    Prediction vectors ``softmax(logits)`` are L2-normalised, their cosine similarities
    (self-similarity excluded) divided by ``temperature`` and turned into a row-wise softmax
    P; SND = -(1/N) sum_ij P_ij log P_ij.
    """
    p = softmax(logits)
    if len(p) < 2:
        raise UserError("SND needs at least 2 target predictions")
    f = p / np.linalg.norm(p, axis=1, keepdims=True)
    sim = f @ f.T / temperature
    np.fill_diagonal(sim, -np.inf)
    q = softmax(sim)
    return float(-np.mean(np.sum(q * np.log(np.clip(q, 1e-300, None)), -1)))


def density_ratio_weights(source_features: np.ndarray, target_features: np.ndarray, seed: int = 0, folds: int = 5) -> np.ndarray:
    """Importance weights w(x) = p_t(x)/p_s(x) of the source examples from a domain classifier.

    A logistic regression (on standardised features) separates source (0) from target (1);
    with out-of-fold probabilities d(x) = P(target | x) the weights are
    ``(n_s / n_t) * d / (1 - d)`` (You et al. 2019, Sec. 4.1).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, xt = np.asarray(source_features, np.float64), np.asarray(target_features, np.float64)
    x = np.concatenate([xs, xt])
    y = np.concatenate([np.zeros(len(xs), int), np.ones(len(xt), int)])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    prob = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[: len(xs), 1]
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    return (len(xs) / len(xt)) * prob / (1.0 - prob)


def iwcv_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """IWCV (Sugiyama et al. 2007, eq. 8): mean of ``weights * losses``."""
    losses, weights = np.asarray(losses, np.float64), np.asarray(weights, np.float64)
    if losses.shape != weights.shape:
        raise UserError(f"losses {losses.shape} and weights {weights.shape} must have the same shape")
    return float(np.mean(weights * losses))


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """DEV (You et al. 2019, Algorithm 1): IWCV with the weights as control variate.

    With L = w * l: eta = -Cov(L, w) / Var(w) and risk = mean(L) + eta * mean(w) - eta.
    When all weights are equal (no shift detected) it reduces to mean(L).
    """
    losses, weights = np.asarray(losses, np.float64), np.asarray(weights, np.float64)
    weighted = weights * losses
    var = np.var(weights, ddof=1) if len(weights) > 1 else 0.0
    if var <= 0:
        return float(np.mean(weighted))
    eta = -np.cov(weighted, weights, ddof=1)[0, 1] / var
    return float(np.mean(weighted) + eta * np.mean(weights) - eta)


def label_free_scores(
    source_val: dict[str, np.ndarray], target_train: dict[str, np.ndarray], seed: int = 0, max_target: int | None = None
) -> dict[str, float]:
    """The validators that read no target label: IWCV, DEV, target entropy and SND.

    Args:
      source_val: ``{"logits", "features", "label"}`` on labelled source validation data.
      target_train: ``{"logits", "features"}`` on the unlabelled target training data; its
        labels are not read.
      seed: seed of the domain classifier's folds and of the target subsample.
      max_target: score on at most this many target examples, a subsample drawn with
        ``seed`` (SND's similarity matrix is n x n); None: all of them.
    """
    t_logits, t_feats = target_train["logits"], target_train["features"]
    if max_target is not None and len(t_logits) > max_target:
        keep = np.sort(np.random.default_rng(seed).permutation(len(t_logits))[:max_target])
        t_logits, t_feats = t_logits[keep], t_feats[keep]
    weights = density_ratio_weights(source_val["features"], t_feats, seed=seed)
    losses = cross_entropy_per_example(source_val["logits"], source_val["label"])
    return {
        "iwcv_risk": iwcv_risk(losses, weights),
        "dev_risk": dev_risk(losses, weights),
        "target_entropy": prediction_entropy(t_logits),
        "snd": soft_neighborhood_density(t_logits),
    }


# Target examples the label-free validators read at most (a seeded subsample beyond): SND's
# similarity matrix is n x n, 23 GB in float64 for MNIST's 54,000 training images.
VALIDATOR_TARGET_EXAMPLES = 4000


def selection_scores(
    source_val: dict[str, np.ndarray], target_train: dict[str, np.ndarray], target_test: dict[str, np.ndarray],
    seed: int = 0, max_target: int | None = VALIDATOR_TARGET_EXAMPLES,
) -> dict[str, float]:
    """Every validator's score of one trained model (:func:`label_free_scores` and the two accuracies).

    Args:
      source_val: ``{"logits", "features", "label"}`` on labelled source validation data.
      target_train: ``{"logits", "features"}`` on the unlabelled target training data
        (what a UDA validator may see); its labels are not read.
      target_test: ``{"logits", "label"}``, read only by the oracle.
      seed: seed of the domain classifier's folds and of the target subsample.
      max_target: the label-free validators read at most this many target examples
        (:func:`label_free_scores`); None: all of them.
    """
    return {
        "source_val_accuracy": float(np.mean(np.argmax(source_val["logits"], -1) == source_val["label"])),
        "target_oracle_accuracy": float(np.mean(np.argmax(target_test["logits"], -1) == target_test["label"])),
        **label_free_scores(source_val, target_train, seed, max_target),
    }


def select_best(records: Sequence[dict[str, Any]], validator: str) -> dict[str, Any]:
    """The record whose ``record["selection"][validator]`` is best (first one on ties).

    Raises:
      ValueError: for an unknown validator or records without selection scores.
    """
    if validator not in VALIDATORS:
        raise UserError(f"unknown validator {validator!r}; valid: {', '.join(VALIDATORS)}")
    if not records:
        raise UserError("no records to select from")
    missing = [r for r in records if validator not in r.get("selection", {})]
    if missing:
        raise UserError(f"{len(missing)} record(s) have no selection scores; they were not written by `da bench`")
    sign = 1.0 if VALIDATORS[validator].higher_is_better else -1.0
    scores = [sign * r["selection"][validator] for r in records]
    return records[int(np.argmax(scores))]
