"""Tests of the tfds catalog domains (da_framework.data.catalog).

Two kinds of fake data are used, neither needs TensorFlow nor the network:

* ``tfds.testing.mock_data`` patches ``tfds.data_source`` to serve random records that
  follow each dataset's feature spec (shapes, dtypes, ranges, batching);
* :func:`_prepare_fake` writes small hand-written examples as a real ``array_record``
  tfds dataset (exact values, split slicing, the skip-decoding VOC scan, bytes texts).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from da_framework.data import DomainError, batch_iterator, catalog, domain_entries, get_domain, text, voc2007

tfds = pytest.importorskip("tensorflow_datasets")

IMAGE_DOMAINS = {
    "mnist": (28, 28, 1),
    "mnist32rgb": (32, 32, 3),
    "svhn_cropped": (32, 32, 3),
    "svhn_gray28": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
ALL_DOMAINS = [*IMAGE_DOMAINS, "imdb_reviews", "voc2007/bird", "voc2007/person"]
SPLITS = ("train", "val", "test")
TFDS_NAMES = {
    "mnist32rgb": "mnist",
    "svhn_gray28": "svhn_cropped",
    "voc2007/bird": "voc/2007",
    "voc2007/person": "voc/2007",
}


@pytest.fixture
def mock_tfds() -> Iterator[None]:
    with tfds.testing.mock_data(num_examples=6):
        yield


def _prepare_fake(name: str, config: str | None, splits: Mapping[str, Sequence[dict]], data_dir: Path) -> None:
    """Writes ``splits`` as a prepared array_record dataset with tfds's own features."""
    base = tfds.builder_cls(name)

    def split_generators(self: Any, dl_manager: Any) -> dict[str, Any]:
        return {split: enumerate(examples) for split, examples in splits.items()}

    fake = type(
        base.__name__,
        (base,),
        {"name": name, "_split_generators": split_generators},
        skip_registration=True,
    )
    fake(config=config, data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def _voc_example(labels: list[int], difficult: list[bool]) -> dict[str, Any]:
    n = len(labels)
    boxes = [tfds.features.BBox(0.1 * i, 0.2, 0.1 * i + 0.5, 0.9) for i in range(n)]
    return {
        "image": Image.fromarray(np.full((30, 50, 3), 200, np.uint8)),
        "image/filename": "x.jpg",
        "labels": sorted(set(labels)),
        "labels_no_difficult": [],
        "objects": {
            "bbox": boxes,
            "is_difficult": difficult,
            "is_truncated": [False] * n,
            "label": labels,
            "pose": ["frontal"] * n,
        },
    }


def _digit(value: int) -> dict[str, Any]:
    return {"image": Image.fromarray(np.full((28, 28), value, np.uint8)), "label": value % 10}


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding small real mnist, imdb_reviews and voc/2007 datasets."""
    root = tmp_path_factory.mktemp("tfds")
    digits = {"train": [_digit(v) for v in range(20)], "test": [_digit(255)] * 3}
    _prepare_fake("mnist", None, digits, root)
    review = {"text": "Great film, great cast! Bad plot? No: bad film.", "label": 1}
    reviews = {
        "train": [review] * 10,  # identical: tfds shuffles on write, and any 9 are the same
        "test": [{"text": "A great, unknown plot", "label": 1}],
        "unsupervised": [{"text": "x", "label": -1}],
    }
    _prepare_fake("imdb_reviews", "plain_text", reviews, root)
    voc = {
        "train": [
            _voc_example([2, 14, 2], [False, True, True]),
            _voc_example([14], [False]),
            _voc_example([], []),
        ],
        "validation": [_voc_example([7], [False])],
        "test": [_voc_example([2], [True])],
    }
    _prepare_fake("voc", "2007", voc, root)
    return root


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("name", IMAGE_DOMAINS)
def test_image_domain_records_and_batches(mock_tfds: None, name: str) -> None:
    shape = IMAGE_DOMAINS[name]
    domain = get_domain(name)
    assert (domain.name, domain.input_shape, domain.num_classes, domain.modality) == (
        name,
        shape,
        10,
        "image",
    )
    assert set(domain.splits) == set(SPLITS)
    for split in SPLITS:
        record = domain.split(split)[0]
        assert set(record) == {"image", "label"}
        assert record["image"].dtype == np.float32 and record["image"].shape == shape
        assert 0.0 <= record["image"].min() <= record["image"].max() <= 1.0
        assert record["label"].dtype == np.int32 and 0 <= record["label"] < 10
    if shape[-1] == 3 and name.startswith("mnist"):
        image = domain.split("train")[0]["image"]
        np.testing.assert_array_equal(image[..., 0], image[..., 2])  # gray replicated
    batch = next(batch_iterator(domain.split("train"), 4, seed=0))
    assert batch["image"].shape == (4, *shape) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    epoch = list(batch_iterator(domain.split("test"), 4, seed=0, repeat=False, drop_remainder=False))
    assert sum(len(b["label"]) for b in epoch) == len(domain.split("test"))


def test_cifar10_class_names(mock_tfds: None) -> None:
    assert get_domain("cifar10").class_names == catalog.CIFAR10_CLASS_NAMES
    assert catalog.CIFAR10_CLASS_NAMES[0] == "airplane" and catalog.CIFAR10_CLASS_NAMES[-1] == "truck"


def test_preprocess_image() -> None:
    gray = np.full((28, 28, 1), 255, np.uint8)
    out = catalog.preprocess_image(gray, 32, 3)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0)
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(catalog.preprocess_image(red, 28, 1), round(0.299 * 255) / 255, atol=1 / 255)
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (64, 1, 3))
    small = catalog.preprocess_image(ramp, 16)
    assert small.shape == (16, 16, 3) and np.all(np.diff(small[0, :, 0]) > 0)  # order kept
    np.testing.assert_array_equal(catalog.preprocess_image(ramp), ramp / np.float32(255))


def test_prepared_mnist_split_slicing_and_values(fake_dir: Path) -> None:
    domain = get_domain("mnist", data_dir=str(fake_dir))
    assert {s: len(domain.split(s)) for s in SPLITS} == {"train": 18, "val": 2, "test": 3}
    values = sorted(
        round(float(domain.split(s)[i]["image"][0, 0, 0]) * 255)
        for s in ("train", "val")
        for i in range(len(domain.split(s)))
    )
    assert values == list(range(20))  # train[:90%] and train[90%:] partition tfds train
    np.testing.assert_array_equal(domain.split("test")[0]["image"], 1.0)
    rgb = get_domain("mnist32rgb", data_dir=str(fake_dir)).split("test")[0]["image"]
    assert rgb.shape == (32, 32, 3)
    np.testing.assert_allclose(rgb, 1.0)
    batch = next(batch_iterator(domain.split("train"), 5, seed=1))
    assert batch["image"].shape == (5, 28, 28, 1)


# ------------------------------------------------------------------------------- text


def test_tokenize() -> None:
    assert text.tokenize("Hello, WORLD! It's a 2nd-rate<br />film") == [
        "hello",
        "world",
        "it",
        "s",
        "a",
        "2nd",
        "rate",
        "br",
        "film",
    ]
    assert text.tokenize(b"caf\xc3\xa9 ok") == ["caf", "ok"]
    assert text.tokenize("  ...  ") == []


def test_build_vocabulary_and_encode() -> None:
    texts = ["b a a", "c b a", "d"]
    vocab = text.build_vocabulary(texts, size=5)  # a:3, b:2, then c/d tie -> c
    assert vocab == {"a": 2, "b": 3, "c": 4}
    assert text.build_vocabulary(texts, size=100) == {"a": 2, "b": 3, "c": 4, "d": 5}
    ids = text.encode("A d b zzz", vocab, 6)
    assert ids.dtype == np.int32 and ids.tolist() == [2, 1, 3, 1, 0, 0]
    assert text.encode(b"a b c a", vocab, 2).tolist() == [2, 3]
    assert text.encode("", vocab, 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        text.build_vocabulary(texts, size=1)


def test_vocabulary_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(40)]
    vocab = text.build_vocabulary(texts, size=12)
    for seed in range(3):
        shuffled = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))]
        assert text.build_vocabulary(shuffled, size=12) == vocab
    assert sorted(vocab.values()) == list(range(2, 12))


def test_imdb_domain_mock(mock_tfds: None) -> None:
    domain = get_domain("imdb_reviews")
    assert (domain.modality, domain.input_key, domain.input_shape, domain.num_classes) == (
        "text",
        "text",
        (256,),
        2,
    )
    encoder = domain.split("train").fn
    assert all(domain.split(s).fn is encoder for s in SPLITS)  # one vocabulary per domain
    assert "vocab" not in encoder.__dict__  # built lazily
    record = domain.split("val")[0]
    assert "vocab" in encoder.__dict__ and len(encoder.vocab) <= catalog.IMDB_VOCAB_SIZE - 2
    assert record["text"].dtype == np.int32 and record["text"].shape == (256,)
    assert record["label"].dtype == np.int32 and record["label"] in (0, 1)
    batch = next(batch_iterator(domain.split("train"), 4, seed=0))
    assert batch["text"].shape == (4, 256) and batch["label"].shape == (4,)
    assert 0 <= batch["text"].min() and batch["text"].max() < catalog.IMDB_VOCAB_SIZE


def test_imdb_prepared_exact_ids(fake_dir: Path) -> None:
    domain = catalog.imdb_reviews(str(fake_dir), vocab_size=6, length=5)
    assert {s: len(domain.split(s)) for s in SPLITS} == {"train": 9, "val": 1, "test": 1}
    # train[:90%] = 9 reviews (stored as bytes): bad/film/great x18, cast/no/plot x9;
    # 4 word ids, ties broken alphabetically.
    assert domain.split("train").fn.vocab == {"bad": 2, "film": 3, "great": 4, "cast": 5}
    record = domain.split("test")[0]  # "A great, unknown plot"
    assert record["text"].tolist() == [1, 4, 1, 1, 0] and record["label"] == 1


# -------------------------------------------------------------------------------- VOC


def test_voc_class_names_match_tfds(mock_tfds: None) -> None:
    names = tfds.builder("voc/2007").info.features["objects"]["label"].names
    assert tuple(names) == voc2007.VOC_CLASS_NAMES
    assert names.index("bird") == 2 and names.index("person") == 14


def _raw_voc(labels: list[int], n_boxes: int | None = None, n_difficult: int | None = None) -> dict[str, Any]:
    n = len(labels)
    boxes = np.array(
        [[0.1 * i, 0.2, 0.1 * i + 0.5, 0.9] for i in range(n if n_boxes is None else n_boxes)],
        np.float32,
    )
    difficult = np.arange(n if n_difficult is None else n_difficult) % 2 == 1
    objects = {
        "bbox": boxes.reshape(-1, 4),
        "label": np.array(labels, np.int64),
        "is_difficult": difficult,
    }
    return {"image": np.zeros((10, 20, 3), np.uint8), "objects": objects}


def test_voc_record_consistent_lengths() -> None:
    raw = _raw_voc([2, 14, 2])  # difficult: F, T, F
    bird = voc2007.voc_record(raw, 2, image_size=16, max_boxes=4)
    assert bird["image"].shape == (16, 16, 3) and bird["image"].dtype == np.float32
    assert bird["boxes"].shape == (4, 4) and bird["boxes"].dtype == np.float32
    np.testing.assert_allclose(bird["boxes"][:2], raw["objects"]["bbox"][[0, 2]])
    np.testing.assert_array_equal(bird["boxes"][2:], 0.0)
    assert bird["box_mask"].tolist() == [True, True, False, False]
    assert bird["is_difficult"].tolist() == [False, False, False, False]
    assert bird["label"].dtype == np.int32 and bird["label"] == 1
    person = voc2007.voc_record(raw, 14, image_size=16, max_boxes=4)
    assert person["box_mask"].tolist() == [True, False, False, False] and person["is_difficult"][0]
    cat = voc2007.voc_record(raw, 7, image_size=16, max_boxes=4)
    assert cat["label"] == 0 and not cat["box_mask"].any() and not cat["boxes"].any()
    many = voc2007.voc_record(_raw_voc([2] * 6), 2, image_size=8, max_boxes=3)
    assert many["box_mask"].all() and many["boxes"].shape == (3, 4)  # extra boxes dropped
    empty = voc2007.voc_record(
        {"image": raw["image"], "objects": {"bbox": [], "label": [], "is_difficult": []}}, 2, 8, 2
    )
    assert empty["label"] == 0 and empty["boxes"].shape == (2, 4) and not empty["box_mask"].any()


def test_voc_record_inconsistent_lengths_truncate() -> None:
    # As in tfds mock data: 3 boxes, 2 labels, 4 difficult flags -> 2 objects.
    raw = _raw_voc([2, 2], n_boxes=3, n_difficult=4)
    record = voc2007.voc_record(raw, 2, image_size=8, max_boxes=4)
    assert record["box_mask"].tolist() == [True, True, False, False]
    np.testing.assert_allclose(record["boxes"][:2], raw["objects"]["bbox"][:2])
    assert record["is_difficult"].tolist() == [False, True, False, False]
    assert voc2007.contains_label(_raw_voc([14, 2], n_boxes=1), 14)
    assert not voc2007.contains_label(_raw_voc([14, 2], n_boxes=1), 2)  # label beyond the boxes


def test_filtered_source() -> None:
    records = [{"v": i} for i in range(10)]
    even = voc2007.FilteredSource(records, lambda r: r["v"] % 2 == 0)
    assert len(even) == 5 and [even[i]["v"] for i in range(5)] == [0, 2, 4, 6, 8]
    scan = [{"v": i + 1} for i in range(10)]  # a different view: proves `scan` decides
    assert voc2007.FilteredSource(records, lambda r: r["v"] % 2 == 0, scan).indices.tolist() == [
        1,
        3,
        5,
        7,
        9,
    ]

    class Failing:
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> dict:
            raise ImportError("no tensorflow")

    assert len(voc2007.FilteredSource(records, lambda r: r["v"] < 3, Failing())) == 3


@pytest.mark.parametrize("category, label_id", [("bird", 2), ("person", 14)])
def test_voc_domain_mock(mock_tfds: None, category: str, label_id: int) -> None:
    domain = voc2007.voc2007_domain(category, image_size=32, max_boxes=8)
    assert (domain.name, domain.input_shape, domain.num_classes) == (
        f"voc2007/{category}",
        (32, 32, 3),
        2,
    )
    for split in SPLITS:
        source = domain.split(split).source
        raw = [source.source[i] for i in range(len(source.source))]  # mock's random records
        assert len(source) == sum(voc2007.contains_label(r, label_id) for r in raw)
        for i in range(len(source)):
            record = domain.split(split)[i]
            assert record["label"] == 1 and record["box_mask"].any()
            assert 0.0 <= record["boxes"].min() and record["boxes"].max() <= 1.0
    train = domain.split("train")
    if len(train):
        batch = next(batch_iterator(train, 2, seed=0))
        assert batch["image"].shape == (2, 32, 32, 3) and batch["boxes"].shape == (2, 8, 4)
        assert batch["box_mask"].dtype == bool and batch["is_difficult"].shape == (2, 8)


def test_voc_registered_defaults(mock_tfds: None) -> None:
    domain = get_domain("voc2007/person")
    record = domain.split("val")[0]
    assert record["image"].shape == (128, 128, 3) and domain.input_shape == (128, 128, 3)
    assert record["boxes"].shape == (voc2007.VOC_MAX_BOXES, 4)


def test_voc_prepared_filter_and_skip_decoding(fake_dir: Path) -> None:
    bird = voc2007.voc2007_domain("bird", str(fake_dir), image_size=16, max_boxes=3)
    assert {s: len(bird.split(s)) for s in SPLITS} == {"train": 1, "val": 0, "test": 1}
    assert isinstance(bird.split("train").source.scan[0]["image"], bytes)  # JPEG never decoded
    record = bird.split("train")[0]
    np.testing.assert_allclose(record["boxes"], [[0.0, 0.2, 0.5, 0.9], [0.2, 0.2, 0.7, 0.9], [0, 0, 0, 0]], atol=1e-6)
    assert record["box_mask"].tolist() == [True, True, False]
    assert record["is_difficult"].tolist() == [False, True, False]
    assert record["image"].shape == (16, 16, 3)
    np.testing.assert_allclose(record["image"], 200 / 255, atol=3 / 255)  # JPEG round trip
    person = voc2007.voc2007_domain("person", str(fake_dir), image_size=16)
    assert len(person.split("train")) == 2  # tfds shuffled the examples when writing
    assert sorted(int(person.split("train")[i]["box_mask"].sum()) for i in range(2)) == [1, 1]


# ------------------------------------------------------------------------ missing data


@pytest.mark.parametrize("name", ALL_DOMAINS)
def test_missing_data_error(tmp_path: Path, name: str) -> None:
    data_dir = str(tmp_path / "empty")
    with pytest.raises(catalog.DatasetNotPreparedError) as info:
        get_domain(name, data_dir=data_dir)
    message = str(info.value)
    tfds_name = TFDS_NAMES.get(name, name)
    assert tfds_name in message and data_dir in message and "tfds build" in message
    assert f"tfds build {tfds_name} --data_dir {data_dir}" in message and "array_record" in message
    assert isinstance(info.value, DomainError)


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DA_DATA_DIR", raising=False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    assert catalog.resolve_data_dir() == os.path.expanduser("~/tensorflow_datasets")
    assert catalog.resolve_data_dir("/x/y") == "/x/y"
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert catalog.resolve_data_dir() == str(tmp_path / "tfds")
    monkeypatch.setenv("DA_DATA_DIR", str(tmp_path / "da"))
    assert catalog.resolve_data_dir() == str(tmp_path / "da")
    with pytest.raises(
        catalog.DatasetNotPreparedError, match=re.escape(f"tfds build mnist --data_dir {tmp_path / 'da'}")
    ):
        get_domain("mnist")


def test_catalog_entries_need_download() -> None:
    entries = {e.name: e for e in domain_entries()}
    assert all(entries[n].needs_download and entries[n].description for n in ALL_DOMAINS)
