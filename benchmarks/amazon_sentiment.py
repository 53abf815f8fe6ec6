"""Linear diagnostics for the Amazon reviews sweep: is a gap to Ganin et al.'s NN in the features?

The networks are trained by the framework (``da bench amazon_sentiment``, records in
``benchmarks/results/amazon_sentiment``).  This script fits an L2 logistic regression (scikit-learn,
lbfgs) on the same source ``train`` split (1,800 reviews) and scores it on all 2,000 target
reviews, for every ordered pair, with two vocabularies of the 5,000 most frequent unigrams +
bigrams:

* ``shared``: fitted on all four domains' texts (what the registered ``amazon/*`` domains use);
* ``pair``: fitted on the pair's source + target texts only (the protocol of the issue).

C is chosen from {0.01, 0.1, 1} by the accuracy on the source ``val`` split (200 reviews); no
target label is used for any choice.  Run (about 4 CPU minutes on the 2-core machine)::

    DA_DATA_DIR=../shared/data nice -n 10 python benchmarks/amazon_sentiment.py

writes ``benchmarks/results/amazon_linear/linear.json`` and prints a table (docs/amazon_sentiment.md).
With the argument ``binary`` it uses presence features ``min(count, 1)`` and only the shared
vocabulary, and writes ``linear_binary.json`` (about 2 CPU minutes).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from da_framework.data import amazon_reviews as amz

C_GRID = (0.01, 0.1, 1.0)
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "amazon_linear"


def fit_select(x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray]) -> tuple[LogisticRegression, float, float]:
    """The logistic regression on ``train`` whose C has the best ``val`` accuracy: (model, C, val acc)."""
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000).fit(x[splits["train"]], y[splits["train"]])
        acc = float(clf.score(x[splits["val"]], y[splits["val"]]))
        if best is None or acc > best[2]:
            best = (clf, c, acc)
    return best  # type: ignore[return-value]


def main(binary: bool = False) -> None:
    """Fits and scores every pair (both vocabularies, or presence features on the shared one); prints and writes."""
    start = time.perf_counter()
    shared_vocab, reviews = amz.shared_features()
    transform = (lambda x: np.minimum(x, 1.0)) if binary else (lambda x: x)
    shared = {d: transform(amz.bag_of_words(reviews[d][0], shared_vocab)) for d in amz.DOMAINS}
    rows = []
    for s in amz.DOMAINS:
        ys = reviews[s][1]
        splits = amz.split_indices(len(ys))
        for t in amz.DOMAINS:
            if s == t:
                continue
            feats = {"shared": (shared[s], shared[t])}
            if not binary:
                pair_vocab = amz.fit_vocabulary(reviews[s][0] + reviews[t][0])
                feats["pair"] = (
                    amz.bag_of_words(reviews[s][0], pair_vocab),
                    amz.bag_of_words(reviews[t][0], pair_vocab),
                )
            row = {"source": s, "target": t}
            for name, (xs, xt) in feats.items():
                clf, c, val = fit_select(xs, ys, splits)
                row[name] = {
                    "C": c,
                    "source_val_accuracy": val,
                    "target_test_accuracy": float(clf.score(xt, reviews[t][1])),
                }
            rows.append(row)
            print(
                f"{s:>11} -> {t:<11} "
                + "  ".join(f"{k} {v['target_test_accuracy']:.3f}" for k, v in row.items() if k in feats)
            )
    means = {k: float(np.mean([r[k]["target_test_accuracy"] for r in rows])) for k in feats}
    print("mean: " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()) + f"  ({time.perf_counter() - start:.0f} s)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "features": "binary" if binary else "counts",
        "c_grid": C_GRID,
        "rows": rows,
        "mean_target_test_accuracy": means,
    }
    (RESULTS / ("linear_binary.json" if binary else "linear.json")).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(binary=sys.argv[1:] == ["binary"])
