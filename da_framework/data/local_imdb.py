"""IMDB reviews (Maas et al., ACL 2011) from a local raw-text file: the domain ``imdb``.

File: ``<data_dir>/imdb/imdb.npz`` (the folder/file layout of :mod:`da_framework.data.local`;
the arrays are text, not ``x_*`` images): for each split ``s`` in train, test,
``text_<s>_utf8`` (uint8, all reviews' UTF-8 bytes back to back), ``text_<s>_offsets``
(int64, n + 1 entries; review i is ``utf8[off[i]:off[i + 1]]``) and ``y_<s>`` (0 negative,
1 positive).  The shared copy holds the full labelled 25,000 + 25,000 reviews, stored
negatives first, byte-for-byte the original files (with their ``<br />`` markup).

Tokenisation is :mod:`da_framework.data.text`'s (lower-case, split on every run of
non-``[a-z0-9]``), after each ``<br />`` is replaced by a space (:func:`clean`; the tfds
``imdb_reviews`` domain keeps them, so its vocabulary has a frequent word ``br``).  The
vocabulary (:func:`~da_framework.data.text.build_vocabulary`: the ``vocab_size - 2`` most
frequent words of the ``train`` split, ties alphabetical; ids 0 pad, 1 out of vocabulary) is
built from the ``train`` split only; every review becomes ``length`` int32 token ids
(truncated at the end, 0-padded).

Splits: ``val`` = the last 10% of each class in file order
(:func:`~da_framework.data.local_splits.stratified_split`: 1,250 + 1,250), ``train`` = the rest
(11,250 + 11,250), ``test`` = the file's test reviews (25,000).
"""

from __future__ import annotations

import os

import numpy as np

from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import ArraySource, Domain, DomainError
from da_framework.data.local import local_path, read_only
from da_framework.data.local_splits import stratified_split
from da_framework.data.registry import register_domain
from da_framework.data.text import build_vocabulary, encode

DATASET = "imdb"
VOCAB_SIZE, LENGTH = 20_000, 256
LAYOUT = "<data_dir>/imdb/imdb.npz with arrays text_<split>_utf8, text_<split>_offsets, y_<split> (split: train, test)"
_CACHE: dict[tuple[str, int, int, int, int], Domain] = {}


def clean(text: str) -> str:
    """``text`` with every HTML line break ``<br />`` (also ``<br/>``, ``<br>``) replaced by a space."""
    for tag in ("<br />", "<br/>", "<br>"):
        text = text.replace(tag, " ")
    return text


def decode_texts(utf8: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The strings ``utf8[offsets[i]:offsets[i + 1]]`` decoded as UTF-8, for i < len(offsets) - 1.

    Raises:
      DomainError: offsets that are not a non-decreasing run from 0 to ``len(utf8)``.
    """
    utf8, offsets = np.asarray(utf8, np.uint8), np.asarray(offsets, np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(utf8):
        raise DomainError(f"text offsets must run from 0 to {len(utf8)} (the byte count); got {offsets[:1]}..{offsets[-1:]}")
    if np.any(np.diff(offsets) < 0):
        raise DomainError("text offsets must be non-decreasing")
    raw = utf8.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def read_texts(data_dir: str | None = None) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{"train": (texts, labels), "test": (texts, labels)}`` of ``<data_dir>/imdb/imdb.npz`` (raw texts).

    Raises:
      DatasetNotPreparedError: the file is missing (one line with the path and layout).
      DomainError: an array is missing, or texts and labels differ in number.
    """
    path = local_path(DATASET, data_dir)
    if not os.path.isfile(path):
        raise DatasetNotPreparedError(
            f"imdb is not in the data dir: expected {path} (layout {LAYOUT}; the data dir is the data_dir "
            f"config key, else $DA_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
        )
    out = {}
    with np.load(path) as f:
        for split in ("train", "test"):
            keys = (f"text_{split}_utf8", f"text_{split}_offsets", f"y_{split}")
            missing = [k for k in keys if k not in f]
            if missing:
                raise DomainError(f"{path} lacks array(s) {', '.join(missing)} (layout {LAYOUT})")
            texts = decode_texts(f[keys[0]], f[keys[1]])
            labels = np.asarray(f[keys[2]]).astype(np.int32)
            if len(texts) != len(labels):
                raise DomainError(f"{path}: {split} has {len(texts)} texts but {len(labels)} labels")
            if len(labels) and not np.isin(labels, (0, 1)).all():
                raise DomainError(f"{path}: y_{split} must hold 0 (negative) / 1 (positive) only")
            out[split] = (texts, labels)
    return out


def encode_all(texts: list[str], vocab: dict[str, int], length: int) -> np.ndarray:
    """int32 ``(len(texts), length)`` token ids of the cleaned texts (:func:`clean`, then ``encode``)."""
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        out[i] = encode(clean(t), vocab, length)
    return out


def imdb_domain(data_dir: str | None = None, *, vocab_size: int = VOCAB_SIZE, length: int = LENGTH) -> Domain:
    """IMDB as int32 token ids ``(length,)`` < ``vocab_size``; splits train/val/test (cached per file and sizes).

    Raises:
      DatasetNotPreparedError: the file is missing.
      DomainError: the file is malformed, or ``length`` < 1 (``vocab_size`` < 2 is a UserError).
    """
    if length < 1:
        raise DomainError(f"imdb length (token ids per review) must be >= 1, got {length}")
    path = local_path(DATASET, data_dir)
    stat = os.stat(path) if os.path.isfile(path) else None
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, vocab_size, length) if stat else None
    if key in _CACHE:
        return _CACHE[key]
    raw = read_texts(data_dir)
    texts, labels = raw["train"]
    tr, va = stratified_split(labels)
    vocab = build_vocabulary((clean(texts[i]) for i in tr), vocab_size)
    parts = {
        "train": ([texts[i] for i in tr], labels[tr]),
        "val": ([texts[i] for i in va], labels[va]),
        "test": raw["test"],
    }
    splits = {
        s: ArraySource({"text": read_only(encode_all(t, vocab, length)), "label": read_only(np.array(y, np.int32))})
        for s, (t, y) in parts.items()
    }
    domain = Domain(
        name=DATASET,
        splits=splits,
        num_classes=2,
        input_shape=(length,),
        modality="text",
        description=f"IMDB reviews (local raw text), {length} token ids < {vocab_size}",
        class_names=("neg", "pos"),
    )
    if key is not None:
        _CACHE[key] = domain
    return domain


@register_domain(DATASET, description=f"IMDB sentiment (local raw-text npz), {LENGTH} token ids, vocabulary {VOCAB_SIZE}",
                 needs_download=True)  # fmt: skip
def imdb(data_dir: str | None = None) -> Domain:
    """IMDB reviews from ``<data_dir>/imdb/imdb.npz`` with the default vocabulary and length."""
    return imdb_domain(data_dir)
