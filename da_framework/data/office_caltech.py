"""Office-Caltech-10 SURF features: the classic shallow domain-adaptation benchmark.

Four domains (amazon, webcam, dslr, caltech) x 10 shared classes, each image an 800-bin
bag-of-visual-words histogram of SURF descriptors (B. Gong, Y. Shi, F. Sha & K. Grauman,
"Geodesic Flow Kernel for Unsupervised Domain Adaptation", CVPR 2012; images from Saenko et
al., ECCV 2010 and Caltech-256).  Read from the project's one local layout
(:mod:`da_framework.data.local`)::

    <data_dir>/office_caltech10_surf/office_caltech10_surf.npz

with arrays ``x_<domain>`` (raw visual-word counts, (n, 800)), ``y_<domain>`` (labels 0..9),
``class_names`` and, for each of the 12 ordered pairs, the 20 random trials of Gong et al.'s
protocol ``split_<src>_<tgt>_{train_source,train_target,test_target}`` (int16 (20, k), 0-based
indices into ``x_<src>`` / ``x_<tgt>``; 20 per class from amazon as source, else 8; 3 per
class from the target).  The shared copy's README gives its origin and hashes.

These are feature arrays, not an image :class:`~da_framework.data.domain.Domain`: the loader
returns NumPy arrays for closed-form baselines (:mod:`da_framework.transfer.subspace`).

:func:`preprocess` is the usual preprocessing of the GFK/SA/CORAL/JDA code: each histogram
divided by its sum (L1), then each feature z-scored over all samples of the domain (population
standard deviation; a constant feature becomes 0, as MATLAB's ``zscore``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import DomainError
from da_framework.data.local import local_path

DATASET = "office_caltech10_surf"
DOMAINS = ("amazon", "webcam", "dslr", "caltech")
ABBREV = {"amazon": "A", "webcam": "W", "dslr": "D", "caltech": "C"}
# the order of the JDA (Long et al., ICCV 2013) and CORAL (Sun et al., AAAI 2016) tables
PAIRS = (
    ("caltech", "amazon"), ("caltech", "webcam"), ("caltech", "dslr"),
    ("amazon", "caltech"), ("amazon", "webcam"), ("amazon", "dslr"),
    ("webcam", "caltech"), ("webcam", "amazon"), ("webcam", "dslr"),
    ("dslr", "caltech"), ("dslr", "amazon"), ("dslr", "webcam"),
)  # fmt: skip
SPLIT_PARTS = ("train_source", "train_target", "test_target")
NUM_TRIALS = 20
LAYOUT = (
    "<data_dir>/office_caltech10_surf/office_caltech10_surf.npz with arrays x_<domain>, y_<domain>, class_names, "
    "split_<src>_<tgt>_{train_source,train_target,test_target}"
)


def pair_name(source: str, target: str) -> str:
    """``"C->A"`` style name of a domain pair."""
    return f"{ABBREV[source]}->{ABBREV[target]}"


def preprocess(counts: np.ndarray) -> np.ndarray:
    """L1-normalise each row, then z-score each column: float64 (n, d).

    Args:
      counts: non-negative histograms (n, d) of one domain.

    Returns:
      ``x / x.sum(1)`` standardised per column with the population std (columns with zero
      std are centred only, i.e. become 0).

    Raises:
      DomainError: for a non-2-D array or a row summing to 0 (it has no L1 normalisation).
    """
    x = np.asarray(counts, np.float64)
    if x.ndim != 2:
        raise DomainError(f"preprocess: expected histograms of shape (n, d), got {x.shape}")
    sums = x.sum(1, keepdims=True)
    if np.any(sums == 0):
        raise DomainError(
            f"preprocess: {int(np.sum(sums == 0))} row(s) sum to 0 and cannot be L1-normalised; drop them"
        )
    x = x / sums
    std = x.std(0)
    return (x - x.mean(0)) / np.where(std == 0, 1.0, std)


@dataclasses.dataclass(frozen=True)
class TrialSplit:
    """One of Gong et al.'s random trials for a pair (0-based row indices).

    Attributes:
      train_source: labelled source samples (20 per class from amazon, else 8).
      train_target: the 3-per-class target samples of the semi-supervised setting.
      test_target: the other target samples.
    """

    train_source: np.ndarray
    train_target: np.ndarray
    test_target: np.ndarray


@dataclasses.dataclass(frozen=True)
class OfficeCaltechSurf:
    """The loaded arrays (read-only).

    Attributes:
      path: the file read.
      counts: raw visual-word counts per domain, float32 (n, 800).
      labels: int64 labels 0..9 per domain.
      class_names: the 10 class names.
      splits: ``(source, target) -> {part: (20, k) int array}``.
    """

    path: str
    counts: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    splits: dict[tuple[str, str], dict[str, np.ndarray]]

    def domain(self, name: str, *, preprocessed: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of a domain; features through :func:`preprocess` unless told not to."""
        if name not in self.counts:
            raise DomainError(f"unknown Office-Caltech domain {name!r}; valid: {', '.join(DOMAINS)}")
        x = self.counts[name]
        return (preprocess(x) if preprocessed else x), self.labels[name]

    def trial(self, source: str, target: str, trial: int) -> TrialSplit:
        """The indices of trial ``trial`` (0..19) of the pair ``source -> target``."""
        if (source, target) not in self.splits:
            raise DomainError(f"no Office-Caltech pair {source!r} -> {target!r}; valid domains: {', '.join(DOMAINS)}")
        if not 0 <= trial < NUM_TRIALS:
            raise DomainError(f"trial must be in [0, {NUM_TRIALS}), got {trial}")
        parts = self.splits[(source, target)]
        return TrialSplit(*(parts[p][trial].astype(np.int64) for p in SPLIT_PARTS))


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


def load_office_caltech_surf(data_dir: str | None = None) -> OfficeCaltechSurf:
    """Reads ``office_caltech10_surf.npz`` from the data dir and checks its arrays.

    Args:
      data_dir: see :func:`~da_framework.data.catalog.resolve_data_dir` (else ``$DA_DATA_DIR``, ...).

    Raises:
      DatasetNotPreparedError: (a :class:`DomainError`) the file is missing; one line naming the
        expected path and the layout.
      DomainError: an array is missing, or labels/indices do not fit the features.
    """
    path = local_path(DATASET, data_dir)
    if not os.path.isfile(path):
        raise DatasetNotPreparedError(
            f"{DATASET} is not in the data dir: expected {path} (layout {LAYOUT}; the data dir is the data_dir "
            f"argument, else $DA_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
        )
    keys = ["class_names"] + [f"{a}_{d}" for d in DOMAINS for a in ("x", "y")]
    keys += [f"split_{s}_{t}_{p}" for s, t in PAIRS for p in SPLIT_PARTS]
    with np.load(path) as f:
        missing = [k for k in keys if k not in f]
        if missing:
            raise DomainError(
                f"{path} lacks array(s) {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} (layout {LAYOUT})"
            )
        arrays = {k: f[k] for k in keys}
    counts = {d: _read_only(arrays[f"x_{d}"]) for d in DOMAINS}
    labels = {d: _read_only(arrays[f"y_{d}"].astype(np.int64)) for d in DOMAINS}
    for d in DOMAINS:
        if counts[d].ndim != 2 or len(counts[d]) != len(labels[d]):
            raise DomainError(f"{path}: x_{d} {counts[d].shape} and y_{d} {labels[d].shape} do not match")
    splits = {}
    for s, t in PAIRS:
        parts = {p: _read_only(arrays[f"split_{s}_{t}_{p}"]) for p in SPLIT_PARTS}
        for p, a in parts.items():
            n = len(counts[s] if p == "train_source" else counts[t])
            if a.ndim != 2 or a.shape[0] != NUM_TRIALS or a.min() < 0 or a.max() >= n:
                raise DomainError(f"{path}: split_{s}_{t}_{p} {a.shape} is not {NUM_TRIALS} trials of indices < {n}")
        splits[(s, t)] = parts
    return OfficeCaltechSurf(path, counts, labels, tuple(str(c) for c in arrays["class_names"]), splits)
