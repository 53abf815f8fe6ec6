"""Cross-category task splits (CIFAR cats/dogs -> birds/airplanes) on hand-made and mock data."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.category_tasks import OTHER, load_task, task_indices
from da_framework.data.domain import ArraySource, DomainError

tfds = pytest.importorskip("tensorflow_datasets")


def test_task_indices_hand_worked():
    labels = np.array([3, 5, 0, 3, 1, 2, 5, 9, 3, 7])
    idx, task = task_indices(labels, (3, 5), seed=0)
    # positives: 3 at 0, 3, 8 (label 0); 5 at 1, 6 (label 1); negatives: round(5/2) = 2 of 6
    assert sorted(idx[task == 0].tolist()) == [0, 3, 8]
    assert sorted(idx[task == 1].tolist()) == [1, 6]
    neg = idx[task == OTHER]
    assert len(neg) == 2 and not np.isin(labels[neg], (3, 5)).any()
    assert (np.diff(idx) > 0).all()
    idx2, _ = task_indices(labels, (3, 5), seed=0)
    np.testing.assert_array_equal(idx, idx2)
    with pytest.raises(DomainError, match="two distinct"):
        task_indices(labels, (3, 3), 0)
    with pytest.raises(DomainError, match="do not all occur"):
        task_indices(labels, (3, 4), 0)


def test_load_task_limit_and_balance():
    labels = np.repeat(np.arange(10), 5)
    images = np.arange(50, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float32)
    src = ArraySource({"image": images, "label": labels})
    t = load_task(src, (2, 0), seed=1, limit=3)
    assert np.bincount(t.arrays["label"]).tolist() == [3, 3, 3]
    orig = t.arrays["image"][:, 0, 0, 0].astype(int) // 5  # the original class of each image
    assert (orig[t.arrays["label"] == 0] == 2).all() and (orig[t.arrays["label"] == 1] == 0).all()
    assert not np.isin(orig[t.arrays["label"] == OTHER], (0, 2)).any()


def test_task_on_tfds_mock_cifar10():
    from da_framework.data.catalog import cifar10

    with tfds.testing.mock_data(num_examples=40):
        domain = cifar10("/nonexistent")
        labels = np.array([int(domain.splits["train"][i]["label"]) for i in range(len(domain.splits["train"]))])
        if not (np.isin(3, labels) and np.isin(5, labels)):
            pytest.skip("mock data drew no cat or no dog")
        t = load_task(domain.splits["train"], (3, 5), seed=0)
        assert t.arrays["image"].shape[1:] == (32, 32, 3)
        assert set(np.unique(t.arrays["label"])) <= {0, 1, 2}
        assert (t.arrays["label"] == 0).sum() == (labels == 3).sum()


def test_experiment_needs_prepared_cifar(tmp_path):
    path = Path(__file__).resolve().parent.parent / "projects" / "cifar_catsdogs_to_birds_airplanes.py"
    spec = importlib.util.spec_from_file_location("cifar_exp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(DatasetNotPreparedError, match="tfds build cifar10"):
        module.run(tmp_path, [0], 1, data_dir=str(tmp_path))


@pytest.mark.slow
def test_experiment_runs_on_mock_cifar(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parent.parent / "projects" / "cifar_catsdogs_to_birds_airplanes.py"
    spec = importlib.util.spec_from_file_location("cifar_exp2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SOURCE_STEPS", 2)
    monkeypatch.setattr(module, "TARGET_PER_CLASS", 3)
    with tfds.testing.mock_data(num_examples=80):
        rows = module.run(tmp_path, [0], 2, data_dir="/nonexistent")
    assert [r["method"] for r in rows] == ["scratch", "finetune"]
    assert (tmp_path / "cifar_catsdogs_to_birds_airplanes.json").exists()
