"""projects/voc_birds_to_pedestrians.py: data choice and a tiny end-to-end run."""

import importlib.util
from pathlib import Path

import pytest

from da_framework.data.catalog import DatasetNotPreparedError

PATH = Path(__file__).resolve().parent.parent / "projects" / "voc_birds_to_pedestrians.py"


@pytest.fixture
def exp(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("voc_exp", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SYNTHETIC", {"num_train": 12, "num_eval": 4})
    monkeypatch.setenv("DA_DATA_DIR", str(tmp_path / "empty"))
    return module


def test_data_choice(exp, monkeypatch):
    monkeypatch.delenv("DA_DETECTION_SET", raising=False)
    name, source, target = exp.load_pair()  # VOC not prepared -> synthetic
    assert name == "synthetic" and source.name == "synthetic_det/bird" and target.name == "synthetic_det/pedestrian"
    monkeypatch.setenv("DA_DETECTION_SET", "synthetic")
    assert exp.load_pair()[0] == "synthetic"
    monkeypatch.setenv("DA_DETECTION_SET", "voc")
    with pytest.raises(DatasetNotPreparedError, match="voc/2007"):
        exp.load_pair()
    monkeypatch.setenv("DA_DETECTION_SET", "coco")
    with pytest.raises(ValueError, match="DA_DETECTION_SET"):
        exp.load_pair()


def test_summarise(exp):
    rows = [
        {"dataset": "s", "k": 10, "method": "scratch", "seed": s, "ap50": a, "ap50_voc07": a}
        for s, a in ((0, 0.2), (1, 0.4))
    ]
    (row,) = exp.summarise(rows)
    assert row["seeds"] == 2 and row["AP50"] == "0.300 ± 0.141"


@pytest.mark.slow
def test_tiny_run(exp, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DA_DETECTION_SET", "synthetic")
    monkeypatch.setattr(exp, "SHOTS", (2, None))
    rows = exp.run(tmp_path, [0], 1)
    assert "dataset = synthetic" in capsys.readouterr().out
    assert len(rows) == 6 and {r["method"] for r in rows} == {"scratch", "finetune", "finetune+align"}
    assert (tmp_path / "voc_birds_to_pedestrians.json").exists()


def test_voc_chosen_when_prepared(exp, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("DA_DETECTION_SET", "voc")
    with tfds.testing.mock_data(num_examples=24):
        name, source, target = exp.load_pair()
    assert name == "voc/2007" and source.name == "voc2007_det/bird" and target.name == "voc2007_det/person"
    assert target.splits["train"].arrays["image"].shape[1:] == (64, 64, 3)
