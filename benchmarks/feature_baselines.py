"""Closed-form feature-space baselines on frozen source features: none vs subspace alignment vs TCA.

A source LeNet (the ``digits_transfer_wider`` source model, restored from its orbax folder or
trained if absent) maps ``digits/source`` train and ``digits/rotate`` train/test images to its
256-d features.  A logistic regression (scikit-learn, C = 1) is fitted on the (mapped) source
features with labels and evaluated on the (mapped) target test features; no target label is
used:

* ``none``: raw standardised features;
* ``SA d``: subspace alignment (Fernando et al., ICCV 2013) with ``d`` PCA directions fitted on
  the source and target *train* features;
* ``TCA m``: transfer component analysis (Pan et al., TNN 2011), linear kernel, mu = 1, fitted
  on the source and target train features; test features embedded with ``k(x, X) W``.

Run:  nice -n 10 python benchmarks/feature_baselines.py --results-dir results --seeds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np


def _experiment():
    path = Path(__file__).resolve().parent.parent / "projects" / "digits_transfer_wider.py"
    spec = importlib.util.spec_from_file_location("digits_transfer_wider", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_for_seed(results_dir: Path, seed: int, dims: list[int]) -> list[dict]:
    """Target test accuracy of each baseline for one source model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from da_framework.data.registry import get_domain
    from da_framework.transfer.finetune import split_arrays
    from da_framework.transfer.subspace import subspace_alignment, tca

    model, variables, _ = _experiment().source_model(results_dir, seed)

    def feats(x):
        return np.asarray(model.apply(variables, x, train=False)[1], np.float64)

    xs, ys = split_arrays(get_domain("digits/source"), "train")
    xt, _ = split_arrays(get_domain("digits/rotate"), "train")
    xe, ye = split_arrays(get_domain("digits/rotate"), "test")
    fs, ft, fe = feats(xs), feats(xt), feats(xe)
    scale = StandardScaler().fit(np.concatenate([fs, ft]))
    fs, ft, fe = (scale.transform(f).astype(np.float32) for f in (fs, ft, fe))

    def score(train, test):
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(train, ys)
        return round(float(clf.score(test, ye)), 4)

    rows = [{"seed": seed, "baseline": "none", "target_test_accuracy": score(fs, fe)}]
    for d in dims:
        sa = subspace_alignment(fs, ft, d)
        rows.append({"seed": seed, "baseline": f"SA d={d}",
                     "target_test_accuracy": score(np.asarray(sa.transform_source(fs)), np.asarray(sa.transform_target(fe)))})  # fmt: skip
        fit = tca(fs, ft, d, mu=1.0)
        rows.append({"seed": seed, "baseline": f"TCA m={d}",
                     "target_test_accuracy": score(np.asarray(fit.source_embedding), np.asarray(fit.transform(fe)))})  # fmt: skip
    return rows


def main() -> None:
    """Prints mean target accuracy per baseline over seeds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results", help="where digits_transfer_wider keeps its source models")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--dims", default="10,20,40")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    rows = [r for s in range(args.seeds) for r in rows_for_seed(Path(args.results_dir), s, dims)]
    print(f"{'baseline':12s} {'target acc (mean)':>18s} {'std':>7s}  seeds={args.seeds}")
    for name in dict.fromkeys(r["baseline"] for r in rows):
        accs = [r["target_test_accuracy"] for r in rows if r["baseline"] == name]
        print(f"{name:12s} {np.mean(accs):18.4f} {np.std(accs):7.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
