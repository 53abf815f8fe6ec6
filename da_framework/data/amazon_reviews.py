"""Amazon multi-domain sentiment reviews (Blitzer et al., ACL 2007) as bag-of-words domains.

John Blitzer, Mark Dredze, Fernando Pereira, "Biographies, Bollywood, Boom-boxes and Blenders:
Domain Adaptation for Sentiment Classification", ACL 2007: 4 product domains (books, dvd,
electronics, kitchen) x 2,000 labelled reviews (1,000 positive, 1,000 negative).  The
cross-domain benchmark of SCL, mSDA and the shallow DANN of Ganin et al. (JMLR 2016, Table 1).

File (the project's one local layout, :mod:`da_framework.data.local`)::

    <data_dir>/amazon_reviews_blitzer/amazon_reviews_blitzer.npz

with, per domain ``d``, the raw review texts as concatenated UTF-8 bytes ``text_<d>_utf8`` and
offsets ``text_<d>_offsets`` (review ``i`` is ``bytes(u[o[i]:o[i+1]]).decode("utf-8")``) and
labels ``y_<d>`` (1 positive, 0 negative; the 1,000 positive reviews come first).  The shared
copy's README (``../shared/data/amazon_reviews_blitzer/README.md``) gives origin and hashes.

Features, computed here from the raw text (only ``review_text``; titles are not used):

* :func:`tokenize`: HTML entities decoded (``&quot;`` -> ``"``), lower-cased, word tokens
  ``[a-z0-9]+('[a-z0-9]+)*`` (so ``don't`` is one token, punctuation is dropped);
* :func:`ngram_features`: the unigrams plus the bigrams ``"w1_w2"`` of adjacent tokens;
* :func:`fit_vocabulary`: the :data:`VOCAB_SIZE` = 5,000 features of highest total count
  (ties broken alphabetically), column ``j`` = the ``j``-th most frequent;
* :func:`bag_of_words`: float32 count vectors (raw counts, as in the svmlight files of
  Ganin et al.'s code, ``GRAAL-Research/domain_adversarial_neural_network``).

Ganin et al. used the 5,000-d unigram + bigram features of Chen et al. (ICML 2012, mSDA
preprocessing) of the same reviews; their tokeniser and counting corpus are not reproduced.

Domains ``amazon/books``, ``amazon/dvd``, ``amazon/electronics``, ``amazon/kitchen`` share one
vocabulary so that any two of them can be paired: a registered domain cannot know the domain
it will be paired with, so the vocabulary is fitted once on the review texts of **all four**
domains (8,000 texts, labels unused), not on the pair's source + target texts.  Splits (the
same in both roles): ``train`` = the 1,800 reviews with index ``i % 10 != 9``, ``val`` = the
200 with ``i % 10 == 9`` (100 per class), ``test`` = all 2,000.  As a source, the model trains on
``train`` and ``val`` is held out; as a target, ``train`` is the unlabelled adaptation set and
``test`` (which contains it) is scored: transductive, as only 2,000 labelled reviews exist.
"""

from __future__ import annotations

import collections
import html
import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import ArraySource, Domain, DomainError
from da_framework.data.local import local_path
from da_framework.data.registry import register_domain

DATASET = "amazon_reviews_blitzer"
DOMAINS = ("books", "dvd", "electronics", "kitchen")
VOCAB_SIZE = 5000
CLASS_NAMES = ("negative", "positive")
LAYOUT = (
    f"<data_dir>/{DATASET}/{DATASET}.npz with arrays text_<d>_utf8, text_<d>_offsets, y_<d> "
    f"for d in {', '.join(DOMAINS)}"
)
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_CACHE: dict[tuple, object] = {}


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` after decoding HTML entities (see the module docstring)."""
    return _TOKEN_RE.findall(html.unescape(text).lower())


def ngram_features(tokens: Sequence[str]) -> list[str]:
    """The unigrams of ``tokens`` followed by their adjacent bigrams ``"a_b"``."""
    return [*tokens, *(f"{a}_{b}" for a, b in itertools.pairwise(tokens))]


def fit_vocabulary(texts: Iterable[str], size: int = VOCAB_SIZE) -> dict[str, int]:
    """Feature -> column of the ``size`` unigram/bigram features of highest total count in ``texts``.

    Columns are in decreasing count order; equal counts are ordered alphabetically, so the
    vocabulary is a function of the texts alone.

    Raises:
      DomainError: ``size`` is not positive.
    """
    if size <= 0:
        raise DomainError(f"vocabulary size must be positive, got {size}")
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(ngram_features(tokenize(text)))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return {feature: j for j, (feature, _) in enumerate(ranked)}


def bag_of_words(texts: Sequence[str], vocabulary: Mapping[str, int]) -> np.ndarray:
    """float32 ``(len(texts), len(vocabulary))`` counts of each vocabulary feature in each text."""
    out = np.zeros((len(texts), len(vocabulary)), np.float32)
    for i, text in enumerate(texts):
        cols = [vocabulary[f] for f in ngram_features(tokenize(text)) if f in vocabulary]
        np.add.at(out[i], cols, 1.0)
    return out


def decode_texts(utf8: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The strings stored as concatenated UTF-8 bytes ``utf8`` and ``len + 1`` offsets."""
    raw = np.asarray(utf8, np.uint8).tobytes()
    o = np.asarray(offsets, np.int64)
    return [raw[o[i] : o[i + 1]].decode("utf-8") for i in range(len(o) - 1)]


def load_reviews(data_dir: str | None = None) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{domain: (review texts, int32 labels)}`` of the four domains, from the local npz.

    Raises:
      DatasetNotPreparedError: the file is missing (one line naming the path and layout).
      DomainError: an array is missing or texts and labels disagree in number.
    """
    path = local_path(DATASET, data_dir)
    if not os.path.isfile(path):
        raise DatasetNotPreparedError(
            f"{DATASET} is not in the data dir: expected {path} (layout {LAYOUT}; the data dir is the data_dir "
            "config key, else $DA_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
        )
    out = {}
    with np.load(path) as f:
        for d in DOMAINS:
            keys = (f"text_{d}_utf8", f"text_{d}_offsets", f"y_{d}")
            missing = [k for k in keys if k not in f]
            if missing:
                raise DomainError(f"{path} lacks array(s) {', '.join(missing)} (layout {LAYOUT})")
            texts, labels = decode_texts(f[keys[0]], f[keys[1]]), np.asarray(f[keys[2]]).astype(np.int32)
            if len(texts) != len(labels):
                raise DomainError(f"{path}: domain {d} has {len(texts)} texts but {len(labels)} labels")
            out[d] = (texts, labels)
    return out


def split_indices(n: int) -> dict[str, np.ndarray]:
    """``train`` (``i % 10 != 9``), ``val`` (``i % 10 == 9``) and ``test`` (all) indices of ``n`` reviews."""
    i = np.arange(n)
    return {"train": i[i % 10 != 9], "val": i[i % 10 == 9], "test": i}


def _file_key(data_dir: str | None) -> tuple[str, int, int]:
    path = local_path(DATASET, data_dir)
    if not os.path.isfile(path):
        load_reviews(data_dir)  # raises the one-line DatasetNotPreparedError
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_mtime_ns, stat.st_size


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def shared_features(data_dir: str | None = None) -> tuple[dict[str, int], dict[str, tuple[list[str], np.ndarray]]]:
    """The vocabulary fitted on all four domains' texts, and the reviews (cached per file)."""
    key = ("vocabulary", *_file_key(data_dir))
    if key not in _CACHE:
        reviews = load_reviews(data_dir)
        vocabulary = fit_vocabulary(t for d in DOMAINS for t in reviews[d][0])
        _CACHE[key] = (vocabulary, reviews)
    return _CACHE[key]  # type: ignore[return-value]


def amazon_domain(domain: str, data_dir: str | None = None) -> Domain:
    """Domain ``amazon/<domain>``: float32 5,000-d bag-of-words counts in field ``"text"``.

    Raises:
      DomainError: unknown ``domain`` (the message lists the valid ones).
      DatasetNotPreparedError: the file is missing.
    """
    if domain not in DOMAINS:
        raise DomainError(f"unknown Amazon reviews domain {domain!r}; valid: {', '.join(DOMAINS)}")
    key = ("domain", domain, *_file_key(data_dir))
    if key not in _CACHE:
        vocabulary, reviews = shared_features(data_dir)
        texts, labels = reviews[domain]
        x = bag_of_words(texts, vocabulary)
        splits = {
            s: ArraySource({"text": _read_only(x[idx]), "label": _read_only(labels[idx].copy())})
            for s, idx in split_indices(len(texts)).items()
        }
        _CACHE[key] = Domain(
            name=f"amazon/{domain}",
            splits=splits,
            num_classes=2,
            input_shape=(len(vocabulary),),
            modality="text",
            description=f"Amazon {domain} reviews (Blitzer et al. 2007), 5,000 unigram+bigram counts (4-domain vocabulary)",
            class_names=CLASS_NAMES,
        )
    return _CACHE[key]  # type: ignore[return-value]


def _register(domain: str) -> None:
    @register_domain(
        f"amazon/{domain}",
        description=f"Amazon {domain} reviews (local npz), 5,000-d bag of words; pairs with the other amazon/*",
        needs_download=True,
    )
    def factory(data_dir: str | None = None) -> Domain:
        return amazon_domain(domain, data_dir)

    factory.__doc__ = f"The ``amazon/{domain}`` domain (:func:`amazon_domain`)."


for _d in DOMAINS:
    _register(_d)
