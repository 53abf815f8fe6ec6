"""The synthetic text domain pair and the two transfer experiments (smoke runs, marked slow)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from da_framework.data.text import OOV_ID, PAD_ID
from da_framework.data.registry import get_domain
from da_framework.data.text_synthetic import LENGTH, SHARED_SENTIMENT, STYLES, make_sentences, vocab_size, vocabulary
from da_framework.transfer.finetune import split_arrays

ROOT = Path(__file__).resolve().parent.parent


def _experiment(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "projects" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_domains_shapes_and_determinism():
    src, tgt = get_domain("text/source"), get_domain("text/target")
    assert src.modality == tgt.modality == "text" and src.input_shape == tgt.input_shape == (LENGTH,)
    for d in (src, tgt):
        x = d.split("train").arrays["text"]
        assert x.dtype == np.int32 and x.shape == (900, LENGTH)
        assert x.min() >= PAD_ID and x.max() < vocab_size() and not np.any(x == OOV_ID)  # every word is in the vocabulary
        assert 0.4 < d.split("train").arrays["label"].mean() < 0.6
    t1, l1 = make_sentences("target", 20, 3)
    t2, l2 = make_sentences("target", 20, 3)
    assert t1 == t2 and np.array_equal(l1, l2)
    assert sorted(vocabulary().values()) == list(range(2, vocab_size()))


def test_styles_differ_but_share_sentiment_words():
    texts_s, _ = make_sentences("source", 300, 0)
    texts_t, labels_t = make_sentences("target", 300, 1)
    words_s = {w for t in texts_s for w in t.split()}
    words_t = {w for t in texts_t for w in t.split()}
    assert not set(STYLES["source"]["fillers"]) & words_t and not set(STYLES["target"]["fillers"]) & words_s
    assert set(SHARED_SENTIMENT[1]) <= words_s & words_t
    # labels follow the sentiment words (up to the 5% flips and distractors)
    pos = set(SHARED_SENTIMENT[1] + STYLES["target"][1])
    neg = set(SHARED_SENTIMENT[0] + STYLES["target"][0])
    pred = np.array([sum(w in pos for w in t.split()) > sum(w in neg for w in t.split()) for t in texts_t])
    assert np.mean(pred == labels_t) > 0.85
    with pytest.raises(ValueError, match="unknown text style"):
        make_sentences("poems", 1, 0)


def test_text_experiment_dataset_choice(monkeypatch):
    exp = _experiment("imdb_text_transfer")
    assert exp.dataset_choice("synthetic") == "synthetic"
    monkeypatch.setenv("DA_TEXT_DATASET", "synthetic")
    assert exp.dataset_choice() == "synthetic"
    with pytest.raises(ValueError, match="DA_TEXT_DATASET"):
        exp.dataset_choice("wiki")
    assert exp.domains("synthetic") == ("text/source", "text/target", vocab_size())


def test_text_experiment_picks_imdb_when_prepared():
    import tensorflow_datasets as tfds

    exp = _experiment("imdb_text_transfer")
    with tfds.testing.mock_data(num_examples=6):
        assert exp.dataset_choice("auto") == "imdb"
        x, y = split_arrays(get_domain("imdb_reviews"), "test")
        assert x.shape == (6, 256) and x.dtype == np.int32 and set(np.unique(y)) <= {0, 1}
    assert exp.domains("imdb")[:2] == ("imdb_reviews", "imdb_reviews")


@pytest.mark.slow
def test_text_experiment_smoke(tmp_path, monkeypatch):
    exp = _experiment("imdb_text_transfer")
    monkeypatch.setattr(exp, "SOURCE_STEPS", 20)
    monkeypatch.setattr(exp, "LABELS_PER_CLASS", (5,))
    rows = exp.run(tmp_path, [0], steps=5, dataset="synthetic")
    assert [r["variant"] for r in rows] == list(exp.VARIANTS) and all(0 <= r["mean_acc"] <= 1 for r in rows)
    assert (tmp_path / "imdb_text_transfer" / "rows.json").is_file()
    per_seed = json.loads((tmp_path / "imdb_text_transfer" / "rows.json").read_text())
    # 5 labels for each of the 2 classes; one seed: the mean row is that seed's row, std 0
    assert [(r["variant"], r["labels_per_class"], r["labelled"]) for r in per_seed] == [(v, 5, 10) for v in exp.VARIANTS]
    for mean, row in zip(rows, per_seed):
        assert (mean["seeds"], mean["mean_acc"], mean["std_acc"]) == (1, row["target_test_accuracy"], 0.0)
    # one source model per seed, scored once; accuracies are counts over the target test split
    assert len({r["source_model_on_target"] for r in per_seed}) == 1
    n_test = len(split_arrays(get_domain("text/target"), "test")[1])
    for r in per_seed:
        for k in ("target_test_accuracy", "source_model_on_target"):
            assert abs(r[k] * n_test - round(r[k] * n_test)) <= 5e-5 * n_test, (k, r[k])


@pytest.mark.slow
def test_digits_experiment_smoke(tmp_path, monkeypatch):
    exp = _experiment("digits_transfer_wider")
    monkeypatch.setattr(exp, "LABELS_PER_CLASS", (2,))
    _, variables, meta = exp.source_model(tmp_path, 0, steps=5)
    assert (tmp_path / "digits_transfer_wider" / "source_seed0_steps5" / "variables").is_dir()
    _, restored, meta2 = exp.source_model(tmp_path, 0, steps=5)  # restored from orbax, not retrained
    assert meta2["steps"] == 5 and meta2["source_test_accuracy"] == meta["source_test_accuracy"]
    np.testing.assert_array_equal(restored["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
    # Another step count is another model (the 5-step one is never returned as a 6-step one).
    _, other, meta3 = exp.source_model(tmp_path, 0, steps=6)
    assert meta3["steps"] == 6 and not np.array_equal(other["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
    monkeypatch.setattr(exp, "LR", 2e-3)  # a saved model of other settings is refused, not reused
    with pytest.raises(ValueError, match="trained with"):
        exp.source_model(tmp_path, 0, steps=5)
    monkeypatch.setattr(exp, "LR", 1e-3)
    rows = exp.run(tmp_path, [0], steps=3)
    assert len(rows) == len(exp.VARIANTS) and rows[0]["labels_per_class"] == 2
