"""CIFAR-10 4-class and IMDB raw text from the local layout: generated files everywhere, the real copies when present."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from da_framework.data import get_domain
from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import DomainError
from da_framework.data.local_cifar import PIXEL_CAVEAT, cifar10_4class_domain
from da_framework.data.local_imdb import VOCAB_SIZE, clean, decode_texts, imdb_domain
from da_framework.data.local_splits import stratified_split
from da_framework.data.text import OOV_ID, PAD_ID
from da_framework.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_cifar = pytest.mark.skipif(
    not (SHARED / "cifar10_4class" / "cifar10_4class.npz").is_file(), reason="no ../shared/data/cifar10_4class here"
)
needs_imdb = pytest.mark.skipif(not (SHARED / "imdb" / "imdb.npz").is_file(), reason="no ../shared/data/imdb here")


def project(name):
    spec = importlib.util.spec_from_file_location(f"{name}_t", ROOT / "projects" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the per-class split ---------------------------------------------------------------------------------------


def test_stratified_split_hand_case():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    tr, va = stratified_split(labels)
    # round(9.0) = 9, round(4.5) = 4 (round half to even), round(2.7) = 3
    np.testing.assert_array_equal(va, [9, 14])
    np.testing.assert_array_equal(tr, [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17])
    tr, va = stratified_split(np.array([1, 0, 1, 0, 1, 0]), 0.5)  # interleaved classes: file order within a class
    np.testing.assert_array_equal(tr, [0, 1, 2, 3])
    np.testing.assert_array_equal(va, [4, 5])
    with pytest.raises(DomainError, match="train_fraction"):
        stratified_split(labels, 0.0)
    with pytest.raises(DomainError, match="one-dimensional"):
        stratified_split(labels[None])


# --- CIFAR-10 4-class ----------------------------------------------------------------------------------------


def write_cifar(root, n_per_class=10, n_test=2, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (4 * n_per_class, 32, 32, 3), dtype=np.uint8),
        "y_train": np.repeat(np.arange(4), n_per_class),  # stored class by class, like the shared copy
        "x_test": rng.integers(0, 256, (4 * n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": np.repeat(np.arange(4), n_test),
        "class_names": np.array(["airplane", "bird", "cat", "dog"]),
    }
    arrays.update(overrides)
    (root / "cifar10_4class").mkdir(exist_ok=True)
    np.savez(root / "cifar10_4class" / "cifar10_4class.npz", **arrays)
    return arrays


def test_cifar4_exact_pixels_and_per_class_split(tmp_path):
    a = write_cifar(tmp_path)
    d = get_domain("cifar10_4class", str(tmp_path))
    assert d.input_shape == (32, 32, 3) and d.num_classes == 4 and d.class_names == ("airplane", "bird", "cat", "dog")
    train, val, test = (d.splits[s].arrays for s in ("train", "val", "test"))
    # 10 per class -> 9 train + 1 val per class (not: val = the last 4 images, all dogs)
    np.testing.assert_array_equal(np.bincount(train["label"]), [9, 9, 9, 9])
    np.testing.assert_array_equal(val["label"], [0, 1, 2, 3])
    keep = np.array([i for i in range(40) if i % 10 != 9])
    ref = a["x_train"].astype(np.float64) / 255.0  # float64 reference of value / 255
    np.testing.assert_allclose(train["image"], ref[keep], rtol=0, atol=1e-7)
    np.testing.assert_allclose(val["image"], ref[[9, 19, 29, 39]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(test["image"], a["x_test"] / 255.0, rtol=0, atol=1e-7)
    assert train["image"].dtype == np.float32 and not train["image"].flags.writeable
    assert "JPEG" in d.description and "JPEG" in PIXEL_CAVEAT


def test_cifar4_bad_files(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="cifar10_4class/cifar10_4class.npz"):
        cifar10_4class_domain(str(tmp_path))
    write_cifar(tmp_path, class_names=np.array(["cat", "dog", "bird", "airplane"]))
    with pytest.raises(DomainError, match="class_names"):
        cifar10_4class_domain(str(tmp_path))
    write_cifar(tmp_path, x_test=np.zeros((8, 28, 28, 3), np.uint8))
    with pytest.raises(DomainError, match=r"x_test has shape \(8, 28, 28, 3\)"):
        cifar10_4class_domain(str(tmp_path))
    write_cifar(tmp_path, y_test=np.array([0, 1, 2, 3, 4, 0, 1, 2]))
    with pytest.raises(DomainError, match="labels outside 0..3"):
        cifar10_4class_domain(str(tmp_path))


def test_cifar_project_two_way_task_and_choice(tmp_path, monkeypatch):
    exp = project("cifar_catsdogs_to_birds_airplanes")
    write_cifar(tmp_path)
    d = cifar10_4class_domain(str(tmp_path))
    t = exp.two_way_task(d.splits["test"], (1, 0), seed=0)  # bird -> 0, airplane -> 1
    np.testing.assert_array_equal(t.arrays["label"], [1, 1, 0, 0])  # test order: airplane, airplane, bird, bird
    np.testing.assert_array_equal(t.arrays["image"], d.splits["test"].arrays["image"][:4])
    few = exp.two_way_task(d.splits["train"], (2, 3), seed=5, limit=3)
    assert np.bincount(few.arrays["label"]).tolist() == [3, 3]
    rng = np.random.default_rng(6)  # the draw: default_rng(seed + 1), class 2 first, then class 3
    cat = np.sort(rng.permutation(np.arange(18, 27))[:3])
    dog = np.sort(rng.permutation(np.arange(27, 36))[:3])
    ref = d.splits["train"].arrays["image"][np.concatenate([cat, dog])]
    np.testing.assert_array_equal(few.arrays["image"], ref)
    assert exp.dataset_choice("auto", str(tmp_path)) == "cifar10_4class"
    assert exp.dataset_choice("auto", str(tmp_path / "nothing")) == "cifar10"
    monkeypatch.setenv("DA_CIFAR_DATASET", "cifar10")
    assert exp.dataset_choice(None, str(tmp_path)) == "cifar10"
    with pytest.raises(UserError, match="DA_CIFAR_DATASET must be one of"):
        exp.dataset_choice("cifar100")


@pytest.mark.slow
def test_cifar_project_runs_on_tiny_file(tmp_path, monkeypatch):
    exp = project("cifar_catsdogs_to_birds_airplanes")
    write_cifar(tmp_path, n_per_class=12, n_test=3)
    monkeypatch.setattr(exp, "LOCAL_SOURCE_STEPS", 2)
    monkeypatch.setattr(exp, "LOCAL_BUDGETS", (2,))
    table = exp.run(tmp_path / "out", [0], 2, data_dir=str(tmp_path))
    assert [(r["method"], r["labels per class"]) for r in table] == [("scratch", 2), ("finetune", 2)]
    assert all("JPEG" in r["pixels"] for r in table)
    rows = json.loads((tmp_path / "out" / "cifar_catsdogs_to_birds_airplanes.json").read_text())
    assert [r["labelled"] for r in rows] == [4, 4] and all(r["pixels"] == PIXEL_CAVEAT for r in rows)
    for r in rows:  # accuracies are counts over the 3 + 3 bird/airplane test images
        assert r["target_test_accuracy"] * 6 == pytest.approx(round(r["target_test_accuracy"] * 6), abs=1e-3)


@needs_cifar
def test_real_cifar4_matches_its_readme():
    with np.load(SHARED / "cifar10_4class" / "cifar10_4class.npz") as f:
        raw = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    digests = {k: hashlib.sha256(v.tobytes()).hexdigest()[:16] for k, v in raw.items()}
    assert digests == {"x_train": "f76d802f2de0c219", "y_train": "a10f54d597a6feb7",
                       "x_test": "86a14a217fec6752", "y_test": "4b6afba6e009a2b7"}  # fmt: skip
    d = get_domain("cifar10_4class", str(SHARED))
    counts = {s: np.bincount(d.splits[s].arrays["label"]).tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [1800] * 4, "val": [200] * 4, "test": [1000] * 4}
    # val image k of class c is file image c * 2000 + 1800 + k
    np.testing.assert_allclose(d.splits["val"].arrays["image"][200], raw["x_train"][3800] / 255.0, atol=1e-7)


# --- IMDB raw text ---------------------------------------------------------------------------------------------


def pack(texts):
    data = [t.encode("utf-8") for t in texts]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in data])]).astype(np.int64)
    return np.frombuffer(b"".join(data), np.uint8), offsets


TRAIN = ["Good film, good cast.<br /><br />GOOD!", "good fun", "so good", "Bad film.", "bad bad plot", "plot? bad"]
TEST = ["Good plot, bad café", "unseen words"]


def write_imdb(root, train=TRAIN, test=TEST, y_train=(1, 1, 1, 0, 0, 0), y_test=(1, 0), **overrides):
    tr, te = pack(train), pack(test)
    arrays = {"text_train_utf8": tr[0], "text_train_offsets": tr[1], "y_train": np.array(y_train),
              "text_test_utf8": te[0], "text_test_offsets": te[1], "y_test": np.array(y_test)}  # fmt: skip
    arrays.update(overrides)
    (root / "imdb").mkdir(exist_ok=True)
    np.savez(root / "imdb" / "imdb.npz", **arrays)


def test_decode_and_clean_hand_cases():
    utf8, off = pack(["café", "", "a<br />b"])
    assert decode_texts(utf8, off) == ["café", "", "a<br />b"]
    assert clean("a<br /><br />b<br/>c<br>d") == "a  b c d"
    with pytest.raises(DomainError, match="offsets must run from 0"):
        decode_texts(utf8, off[:-1])
    with pytest.raises(DomainError, match="non-decreasing"):
        decode_texts(utf8, np.array([0, 6, 2, len(utf8)]))


def test_imdb_tokens_vocabulary_and_splits_by_hand(tmp_path):
    write_imdb(tmp_path)
    d = imdb_domain(str(tmp_path), vocab_size=6, length=5)
    assert d.modality == "text" and d.input_shape == (5,) and d.class_names == ("neg", "pos")
    # stratified split: per class round(0.9 * 3) = 3 -> the train split is every review, val is empty
    assert [len(d.splits[s]) for s in ("train", "val", "test")] == [6, 0, 2]
    # counts over train after <br /> removal: good 5, bad 4, film 2, plot 2, cast 1, fun 1, so 1
    # -> ids good 2, bad 3, film 4, plot 5 (ties alphabetical); cast / fun / so out of a 6-id vocabulary
    expect_train = [[2, 4, 2, OOV_ID, 2], [2, OOV_ID, PAD_ID, PAD_ID, PAD_ID], [OOV_ID, 2, PAD_ID, PAD_ID, PAD_ID],
                    [3, 4, PAD_ID, PAD_ID, PAD_ID], [3, 3, 5, PAD_ID, PAD_ID], [5, 3, PAD_ID, PAD_ID, PAD_ID]]  # fmt: skip
    np.testing.assert_array_equal(d.splits["train"].arrays["text"], expect_train)
    # "café" tokenises to "caf" (non-[a-z0-9] splits), unknown; test words never enter the vocabulary
    np.testing.assert_array_equal(d.splits["test"].arrays["text"], [[2, 5, 3, OOV_ID, PAD_ID], [OOV_ID] * 2 + [PAD_ID] * 3])
    np.testing.assert_array_equal(d.splits["train"].arrays["label"], [1, 1, 1, 0, 0, 0])
    assert d.splits["train"].arrays["text"].dtype == np.int32


def test_imdb_vocabulary_from_train_split_only(tmp_path):
    texts = [f"w{i} common" for i in range(20)]  # 10 negatives then 10 positives; w9 and w19 go to val
    write_imdb(tmp_path, train=texts, y_train=[0] * 10 + [1] * 10)
    d = imdb_domain(str(tmp_path), vocab_size=100, length=2)
    val = d.splits["val"].arrays
    np.testing.assert_array_equal(val["label"], [0, 1])
    np.testing.assert_array_equal(val["text"][:, 0], [OOV_ID, OOV_ID])  # w9, w19 only occur in val
    assert (d.splits["train"].arrays["text"][:, 0] > OOV_ID).all() and len(set(val["text"][:, 1])) == 1


def test_imdb_bad_files_and_arguments(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="imdb/imdb.npz"):
        imdb_domain(str(tmp_path))
    write_imdb(tmp_path, y_train=(1, 1, 1, 0, 0))
    with pytest.raises(DomainError, match="6 texts but 5 labels"):
        imdb_domain(str(tmp_path))
    write_imdb(tmp_path, y_test=(1, 2))
    with pytest.raises(DomainError, match="0 \\(negative\\) / 1 \\(positive\\)"):
        imdb_domain(str(tmp_path))
    write_imdb(tmp_path)
    with pytest.raises(DomainError, match="length"):
        imdb_domain(str(tmp_path), length=0)
    with pytest.raises(UserError, match="vocabulary size"):
        imdb_domain(str(tmp_path), vocab_size=1)
    (tmp_path / "imdb" / "imdb.npz").unlink()
    np.savez(tmp_path / "imdb" / "imdb.npz", y_train=np.zeros(2))
    with pytest.raises(DomainError, match="lacks array"):
        imdb_domain(str(tmp_path))


def test_imdb_project_choice_and_disjoint_source_target(tmp_path, monkeypatch):
    exp = project("imdb_text_transfer")
    texts = [f"review {i} {'great' if i >= 20 else 'awful'}" for i in range(40)]
    write_imdb(tmp_path, train=texts, y_train=[0] * 20 + [1] * 20)
    assert exp.dataset_choice("auto", str(tmp_path)) == "imdb_local"
    assert exp.domains("imdb_local") == ("imdb", "imdb", VOCAB_SIZE)
    monkeypatch.setattr(exp, "LOCAL_SOURCE_PER_CLASS", 5)
    data = exp.load_data("imdb_local", 0, str(tmp_path))
    (xs, ys), (xt, yt) = data["source"], data["target"]
    assert np.bincount(ys).tolist() == [5, 5] and np.bincount(yt).tolist() == [13, 13]  # 18 per class in train
    assert xs.shape[1] == exp.LOCAL_LENGTH
    rows_s, rows_t = {tuple(r) for r in xs}, {tuple(r) for r in xt}
    assert not rows_s & rows_t  # every review differs ("review <i>"), so disjoint rows = disjoint reviews
    with pytest.raises(ValueError, match="DA_TEXT_DATASET must be one of"):
        exp.dataset_choice("imdb_tfds")


@pytest.mark.slow
def test_imdb_project_runs_on_tiny_file(tmp_path, monkeypatch):
    exp = project("imdb_text_transfer")
    texts = [f"review {i} {'great' if i >= 20 else 'awful'}" for i in range(40)]
    write_imdb(tmp_path, train=texts, y_train=[0] * 20 + [1] * 20)
    monkeypatch.setattr(exp, "SOURCE_STEPS", 3)
    monkeypatch.setattr(exp, "LOCAL_SOURCE_PER_CLASS", 5)
    monkeypatch.setattr(exp, "LOCAL_LABELS_PER_CLASS", (2,))
    means = exp.run(tmp_path / "out", [0], 2, data_dir=str(tmp_path))
    assert [(m["dataset"], m["labels_per_class"], m["variant"]) for m in means] == [
        ("imdb_local", 2, v) for v in exp.VARIANTS
    ]
    rows = json.loads((tmp_path / "out" / "imdb_text_transfer" / "rows.json").read_text())
    assert all(r["labelled"] == 4 and r["length"] == exp.LOCAL_LENGTH and r["source_examples"] == 10 for r in rows)


@needs_imdb
def test_real_imdb_matches_its_readme():
    d = imdb_domain(str(SHARED), length=8)
    counts = {s: np.bincount(d.splits[s].arrays["label"]).tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [11250, 11250], "val": [1250, 1250], "test": [12500, 12500]}
    with np.load(SHARED / "imdb" / "imdb.npz") as f:
        first = decode_texts(f["text_train_utf8"][: f["text_train_offsets"][1]], f["text_train_offsets"][:2])[0]
    assert first.startswith("Story of a man who has unnatural feelings for a pig.")
    # "story of a man who has unnatural feelings": common words, all in the 20,000-word vocabulary
    assert (d.splits["train"].arrays["text"][0] > OOV_ID).all()
