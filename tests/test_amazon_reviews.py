"""Amazon reviews (Blitzer et al. 2007) bag-of-words domains: hand cases, a generated file, the real copy when present."""

import os
from pathlib import Path

import numpy as np
import pytest

from da_framework.data import amazon_reviews as amz
from da_framework.data import get_domain
from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import DomainError

SHARED = Path(os.environ.get("DA_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
needs_shared = pytest.mark.skipif(
    not (SHARED / amz.DATASET / f"{amz.DATASET}.npz").is_file(), reason="no amazon_reviews_blitzer in the data dir"
)


def test_tokenize_and_ngrams_hand_case():
    tokens = amz.tokenize("Great book &amp; GREAT price. Don't buy!")
    assert tokens == ["great", "book", "great", "price", "don't", "buy"]  # '&amp;' -> '&', dropped as punctuation
    assert amz.ngram_features(tokens) == [
        "great", "book", "great", "price", "don't", "buy",
        "great_book", "book_great", "great_price", "price_don't", "don't_buy",
    ]  # fmt: skip
    assert amz.ngram_features(["solo"]) == ["solo"] and amz.ngram_features([]) == []


def test_vocabulary_and_counts_hand_case():
    texts = ["a b a", "b a c"]
    # counts: a 3, b 2, b_a 2, then a_b, a_c, c with 1 each (alphabetical tie-break keeps a_b)
    vocab = amz.fit_vocabulary(texts, size=4)
    assert vocab == {"a": 0, "b": 1, "b_a": 2, "a_b": 3}
    np.testing.assert_array_equal(amz.bag_of_words(texts, vocab), np.array([[2, 1, 1, 1], [1, 1, 1, 0]], np.float32))
    assert amz.bag_of_words(["zzz"], vocab).sum() == 0
    with pytest.raises(DomainError, match="positive"):
        amz.fit_vocabulary(texts, size=0)


def test_decode_texts_utf8_offsets():
    parts = ["caf\u00e9 ok", "", "\u00bd price"]
    raw = [p.encode("utf-8") for p in parts]
    u = np.frombuffer(b"".join(raw), np.uint8)
    o = np.cumsum([0, *map(len, raw)])
    assert amz.decode_texts(u, o) == parts


def write_tiny(root: Path, n: int = 10) -> dict[str, list[str]]:
    """Four domains of n reviews; review i of domain d says '<d> good' (even i) or '<d> bad' (odd i)."""
    arrays, texts = {}, {}
    for d in amz.DOMAINS:
        texts[d] = [f"{d} {'good' if i % 2 == 0 else 'bad'} {'good' if i == 0 else ''}" for i in range(n)]
        raw = [t.encode("utf-8") for t in texts[d]]
        arrays[f"text_{d}_utf8"] = np.frombuffer(b"".join(raw), np.uint8)
        arrays[f"text_{d}_offsets"] = np.cumsum([0, *map(len, raw)]).astype(np.int64)
        arrays[f"y_{d}"] = (np.arange(n) % 2 == 0).astype(np.int64)
    (root / amz.DATASET).mkdir()
    np.savez(root / amz.DATASET / f"{amz.DATASET}.npz", **arrays)
    return texts


def test_domain_from_generated_file(tmp_path):
    write_tiny(tmp_path)
    d = get_domain("amazon/dvd", str(tmp_path))
    # 15 features over all four domains: good 24, bad 20, each domain word 10, <d>_good and <d>_bad 5, good_good 4
    assert d.input_shape == (15,) and d.modality == "text" and d.num_classes == 2
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [9, 1, 10]
    vocab, _ = amz.shared_features(str(tmp_path))
    assert list(vocab) == [
        "good",
        "bad",
        "books",
        "dvd",
        "electronics",
        "kitchen",
        "books_bad",
        "books_good",
        "dvd_bad",
        "dvd_good",
        "electronics_bad",
        "electronics_good",
        "kitchen_bad",
        "kitchen_good",
        "good_good",
    ]
    test = d.splits["test"].arrays
    x0 = test["text"][0]  # "dvd good good": dvd 1, good 2, dvd_good 1, good_good 1
    assert (
        x0[vocab["good"]] == 2 and x0[vocab["dvd"]] == 1 and x0[vocab["dvd_good"]] == 1 and x0[vocab["good_good"]] == 1
    )
    assert x0.sum() == 5
    np.testing.assert_array_equal(d.splits["val"].arrays["label"], [0])  # index 9 (odd: 'bad')
    np.testing.assert_array_equal(d.splits["val"].arrays["text"][0], test["text"][9])
    np.testing.assert_array_equal(test["label"], [1, 0] * 5)
    assert test["text"].dtype == np.float32 and not test["text"].flags.writeable


def test_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as e:
        get_domain("amazon/books", str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / amz.DATASET / f"{amz.DATASET}.npz") in msg and "layout" in msg
    assert isinstance(e.value, DomainError)


def test_malformed_file_and_unknown_domain(tmp_path):
    (tmp_path / amz.DATASET).mkdir()
    np.savez(tmp_path / amz.DATASET / f"{amz.DATASET}.npz", y_books=np.zeros(3))
    with pytest.raises(DomainError, match="lacks array.*text_books_utf8"):
        amz.load_reviews(str(tmp_path))
    with pytest.raises(DomainError, match="valid: books, dvd"):
        amz.amazon_domain("music", str(tmp_path))


@needs_shared
def test_real_file_matches_readme():
    reviews = amz.load_reviews(str(SHARED))
    mean_chars = {"books": 996, "dvd": 942, "electronics": 596, "kitchen": 494}  # README: mean review length
    for d in amz.DOMAINS:
        texts, y = reviews[d]
        assert len(texts) == 2000 and y.dtype == np.int32
        np.testing.assert_array_equal(y, np.r_[np.ones(1000), np.zeros(1000)])  # positives first
        assert round(np.mean([len(t) for t in texts])) == mean_chars[d]


@needs_shared
@pytest.mark.slow
def test_real_domain_shapes():
    d = get_domain("amazon/kitchen", str(SHARED))
    assert d.input_shape == (5000,)
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [1800, 200, 2000]
    assert d.splits["val"].arrays["label"].sum() == 100
