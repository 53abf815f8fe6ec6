"""Office-Caltech-10 SURF: NN, SA, TCA and CORAL with 1-NN and a linear SVM on the 12 domain pairs.

Data: ``<data_dir>/office_caltech10_surf/office_caltech10_surf.npz``
(:mod:`da_framework.data.office_caltech`), each domain L1-normalised then z-scored over all its
samples.  Two unsupervised protocols (no target label is used for fitting):

* ``all_samples`` (the JDA / TCA-style tables, e.g. Long et al., ICCV 2013, Table 2): all
  source samples labelled, all target samples unlabelled; adapt on both, test on all target.
* ``gong20`` (Gong et al., CVPR 2012): the 20 provided random trials; per trial the labelled
  source is ``train_source`` (20 per class from amazon, else 8), the adaptation is fitted on it
  and on the unlabelled ``test_target`` samples, and accuracy is measured on ``test_target``;
  the 3-per-class ``train_target`` samples are not used.  Mean and sample std over the trials.

Methods (hyper-parameters from the anchors, see docs/office_caltech_surf.md):

* ``nn``: no adaptation.
* ``sa``: subspace alignment (Fernando et al., ICCV 2013), d = 30.
* ``tca``: TCA (Pan et al., TNN 2011) as in the JDA code (Long et al.): samples L2-normalised,
  linear kernel, m = 100 components, the MMD matrix normalised to unit Frobenius norm with
  lambda = 1 (our ``mu = lambda (1/n_s + 1/n_t)``), unit-norm eigenvectors, embeddings
  L2-normalised before the classifier.  ``tca_constraint`` is the same with the paper's
  scaling W^T K H K W = I (a diagnostic, not run by default).
* ``coral``: CORAL (Sun et al., AAAI 2016, Algorithm 1), lambda = 1; source recoloured, target kept.

Classifiers: ``1nn`` (Euclidean, first index on ties) and ``linear_svm``
(``sklearn.svm.SVC(kernel="linear", C=1)``, LIBSVM one-vs-one; ``--svm-c cv`` picks C by
2-fold CV on the source), trained on the (mapped) labelled source.  Accuracies are in percent.  One JSON record per (protocol, method,
classifier) goes to ``--out``.

Run:  nice -n 10 python benchmarks/office_caltech_surf.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # the baselines' linear algebra in float64

from da_framework.data.office_caltech import PAIRS, load_office_caltech_surf, pair_name
from da_framework.transfer.subspace import coral, subspace_alignment, tca

PREPROCESSING = "per domain: x / x.sum(1), then (x - mean) / std over all samples of the domain (population std)"
CONFIGS = {
    "nn": {},
    "sa": {"dim": 30},
    "tca": {"num_components": 100, "kernel": "linear", "lambda_jda": 1.0, "mu": "lambda_jda * (1/n_s + 1/n_t)",
            "scaling": "unit", "l2_normalise_samples": True, "l2_normalise_embedding": True},
    "tca_constraint": {"num_components": 100, "kernel": "linear", "lambda_jda": 1.0,
                       "mu": "lambda_jda * (1/n_s + 1/n_t)", "scaling": "constraint",
                       "l2_normalise_samples": True, "l2_normalise_embedding": True},
    "coral": {"regularizer": 1.0},
}  # fmt: skip
CLASSIFIERS = ("1nn", "linear_svm")


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def adapt(method: str, xs: np.ndarray, xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mapped source and target features (float64) of one baseline fitted on ``xs`` and ``xt``."""
    cfg = CONFIGS[method]
    if method == "nn":
        return xs, xt
    if method == "sa":
        fit = subspace_alignment(xs, xt, cfg["dim"])
        zs, zt = fit.transform_source(xs), fit.transform_target(xt)
    elif method.startswith("tca"):
        xs, xt = _l2(xs), _l2(xt)
        mu = cfg["lambda_jda"] * (1.0 / len(xs) + 1.0 / len(xt))
        fit = tca(xs, xt, cfg["num_components"], mu=mu, kernel=cfg["kernel"], scaling=cfg["scaling"])
        zs, zt = _l2(np.asarray(fit.source_embedding)), _l2(np.asarray(fit.target_embedding))
    elif method == "coral":
        fit = coral(xs, xt, regularizer=cfg["regularizer"])
        zs, zt = fit.transform_source(xs), fit.transform_target(xt)
    else:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(CONFIGS)}")
    return np.asarray(zs, np.float64), np.asarray(zt, np.float64)


def one_nn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Labels of the nearest (squared Euclidean) training sample, first index on ties."""
    d2 = (test_x**2).sum(1)[:, None] + (train_x**2).sum(1)[None, :] - 2.0 * test_x @ train_x.T
    return train_y[np.argmin(d2, axis=1)]


C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)  # the grid of the SA code's linear SVM (2-fold CV on the source)


def linear_svm(zs: np.ndarray, ys: np.ndarray, svm_c: float | str):
    """``SVC(kernel="linear", C)`` fitted on the source; ``svm_c="cv"`` picks C from ``C_GRID`` by
    2-fold stratified cross-validation on the labelled source only (first best C on ties)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    if svm_c == "cv":
        folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
        scores = [cross_val_score(SVC(kernel="linear", C=c), zs, ys, cv=folds).mean() for c in C_GRID]
        svm_c = C_GRID[int(np.argmax(scores))]
    return SVC(kernel="linear", C=float(svm_c)).fit(zs, ys)


def accuracies(zs, ys, zt, yt, svm_c: float | str) -> dict[str, float]:
    """Target accuracy (%) of each classifier trained on the mapped source."""
    preds = {"1nn": one_nn(zs, ys, zt), "linear_svm": linear_svm(zs, ys, svm_c).predict(zt)}
    return {c: round(100.0 * float(np.mean(p == yt)), 2) for c, p in preds.items()}


def run_protocol(data, protocol: str, method: str, svm_c: float | str, trials: int) -> dict[str, dict]:
    """``{classifier: {pair: result}}`` of one method under one protocol."""
    out = {c: {} for c in CLASSIFIERS}
    for s, t in PAIRS:
        xs, ys = data.domain(s)
        xt, yt = data.domain(t)
        if protocol == "all_samples":
            zs, zt = adapt(method, xs, xt)
            for c, a in accuracies(zs, ys, zt, yt, svm_c).items():
                out[c][pair_name(s, t)] = {"accuracy": a}
            continue
        per_trial = {c: [] for c in CLASSIFIERS}
        for k in range(trials):
            split = data.trial(s, t, k)
            xs_k, ys_k = xs[split.train_source], ys[split.train_source]
            xt_k, yt_k = xt[split.test_target], yt[split.test_target]
            zs, zt = adapt(method, xs_k, xt_k)
            for c, a in accuracies(zs, ys_k, zt, yt_k, svm_c).items():
                per_trial[c].append(a)
        for c, accs in per_trial.items():
            std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
            out[c][pair_name(s, t)] = {"mean": round(float(np.mean(accs)), 2), "std": round(std, 2), "trials": accs}
        print(f"  {protocol} {method} {pair_name(s, t)}: " + ", ".join(f"{c} {out[c][pair_name(s, t)]['mean']:.2f}" for c in CLASSIFIERS), flush=True)  # fmt: skip
    return out


def main() -> None:
    """Runs the chosen protocols and methods, prints the tables and writes one record each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="data dir (default $DA_DATA_DIR, ...)")
    ap.add_argument("--protocols", default="all_samples,gong20")
    ap.add_argument("--methods", default="nn,sa,tca,coral", help=f"from {', '.join(CONFIGS)}")
    ap.add_argument("--svm-c", default="1.0", help="C of the linear SVM, or 'cv' (2-fold CV on the source over C_GRID)")
    ap.add_argument("--trials", type=int, default=20, help="gong20 trials to run (all 20 for records)")
    ap.add_argument("--out", default="benchmarks/results/office_caltech_surf", help="records folder ('' = none)")
    args = ap.parse_args()
    svm_c = args.svm_c if args.svm_c == "cv" else float(args.svm_c)
    import scipy
    import sklearn

    data = load_office_caltech_surf(args.data_dir)
    sha = hashlib.sha256(Path(data.path).read_bytes()).hexdigest()
    versions = {
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "jax": jax.__version__,
    }
    command = "python " + " ".join(sys.argv)
    for protocol in args.protocols.split(","):
        for method in args.methods.split(","):
            start = time.perf_counter()
            results = run_protocol(data, protocol, method, svm_c, args.trials)
            seconds = round(time.perf_counter() - start, 1)
            for clf, pairs in results.items():
                key = "accuracy" if protocol == "all_samples" else "mean"
                avg = round(float(np.mean([r[key] for r in pairs.values()])), 2)
                print(f"{protocol:11s} {method:14s} {clf:10s} " + " ".join(f"{r[key]:6.2f}" for r in pairs.values()) + f"  avg {avg:6.2f}")  # fmt: skip
                if not args.out:
                    continue
                record = {
                    "benchmark": "office_caltech_surf", "protocol": protocol, "method": method, "classifier": clf,
                    "config": {"method": CONFIGS[method], "preprocessing": PREPROCESSING,
                               "classifier": {"1nn": "1-NN, squared Euclidean, first index on ties",
                                              "linear_svm": f"sklearn.svm.SVC(kernel='linear', C={svm_c})"
                                              + (f", C from {C_GRID} by 2-fold CV on the source" if svm_c == "cv" else "")}[clf],
                               "trials": args.trials if protocol == "gong20" else None},
                    "pairs": pairs, "average": avg, "command": command, "seconds_all_classifiers": seconds,
                    "data": {"path": data.path, "sha256": sha}, "versions": versions,
                }  # fmt: skip
                path = Path(args.out) / f"{protocol}__{method}__{clf}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
