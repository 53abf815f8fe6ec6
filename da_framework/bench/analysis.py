"""Analysis of learned features: proxy A-distance, 2-D embeddings, accuracy curves.

* Proxy A-distance -- Ben-David, Blitzer, Crammer & Pereira, "Analysis of Representations for
  Domain Adaptation", NIPS 2007 (Sec. 4): d_A = 2 (1 - 2 err) where err is the held-out error
  of a linear classifier separating source from target features.  0: indistinguishable
  domains; 2: perfectly separable.  A source-only model's features give the distance
  "before adaptation"; an adapted method's features the distance "after".
* 2-D embedding plots (PCA by default, t-SNE optional) coloured by domain and class.
* Accuracy curves over training from a run's history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from da_framework.errors import UserError


def proxy_a_distance(source_features: np.ndarray, target_features: np.ndarray, seed: int = 0) -> float:
    """Proxy A-distance 2 (1 - 2 err) of a linear domain classifier on a held-out half.

    The classifier (logistic regression on standardised features) is fit on a stratified
    half of the pooled features and ``err`` measured on the other half.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, xt = np.asarray(source_features, np.float64), np.asarray(target_features, np.float64)
    if len(xs) < 2 or len(xt) < 2:
        raise UserError("proxy A-distance needs at least 2 source and 2 target examples")
    x = np.concatenate([xs, xt])
    y = np.concatenate([np.zeros(len(xs), int), np.ones(len(xt), int)])
    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_fit, y_fit)
    err = float(np.mean(clf.predict(x_held) != y_held))
    return 2.0 * (1.0 - 2.0 * err)


def embed_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Projects features to 2-D with ``"pca"`` or ``"tsne"`` (scikit-learn)."""
    x = np.asarray(features, np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x)
    raise UserError(f"unknown embedding {method!r}; valid: pca, tsne")


def plot_embedding(
    panels: Mapping[str, Mapping[str, np.ndarray]], path: Path, method: str = "pca", title: str = ""
) -> Path:
    """Writes a PNG of 2-D embeddings, one panel per entry, two rows (by domain, by class).

    Args:
      panels: name -> ``{"source_features", "source_label", "target_features", "target_label"}``.
      path: the PNG to write.
      method: ``"pca"`` or ``"tsne"``.
      title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.2), squeeze=False)
    for col, (name, d) in enumerate(panels.items()):
        n_s = len(d["source_features"])
        z = embed_2d(np.concatenate([d["source_features"], d["target_features"]]), method)
        top, bottom = axes[0, col], axes[1, col]
        top.scatter(z[:n_s, 0], z[:n_s, 1], s=4, c="tab:blue", label="source")
        top.scatter(z[n_s:, 0], z[n_s:, 1], s=4, c="tab:red", label="target")
        top.set_title(name, fontsize=9)
        labels = np.concatenate([d["source_label"], d["target_label"]])
        bottom.scatter(z[:n_s, 0], z[:n_s, 1], s=4, c=labels[:n_s], cmap="tab10", marker="o", vmin=0, vmax=9)
        bottom.scatter(z[n_s:, 0], z[n_s:, 1], s=6, c=labels[n_s:], cmap="tab10", marker="x", vmin=0, vmax=9, linewidths=0.5)
        for ax in (top, bottom):
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, markerscale=3)
    axes[0, 0].set_ylabel("coloured by domain")
    axes[1, 0].set_ylabel("by class (o source, x target)")
    fig.suptitle(title or f"{method.upper()} of features")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_curve(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of metric ``key`` over a run's history (entries lacking it skipped)."""
    pts = [(h["step"], h[key]) for h in history if key in h]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts], np.float64)


def plot_curves(curves: Mapping[str, Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]], path: Path, keys: Sequence[str], title: str = "") -> Path:
    """Writes a PNG of accuracy curves: one panel per metric key, one line per method (mean over seeds).

    Args:
      curves: ``{"histories": {method: [history of each seed]}}``-like mapping method -> histories.
      path: the PNG to write.
      keys: history metrics to plot, e.g. ``("source_train_accuracy", "target_test_accuracy")``.
      title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method, histories in curves.items():
            series = [accuracy_curve(h, key) for h in histories]
            series = [s for s in series if len(s[0])]
            if not series:
                continue
            n = min(len(s[0]) for s in series)
            steps = series[0][0][:n]
            vals = np.stack([s[1][:n] for s in series])
            ax.plot(steps, vals.mean(0), label=method)
            if len(series) > 1:
                ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.15)
        ax.set_xlabel("step"), ax.set_ylabel(key), ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
