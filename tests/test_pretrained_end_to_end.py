"""Issue 18, item 5: a generated image-folder pair, a randomly initialised torchvision-named
ResNet-18 saved and imported, five DANN steps through ``da run``, evaluation, a record that
names the weights file by its bytes; rerunning reuses the record only while the file is the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from da_framework.cli import app

torch = pytest.importorskip("torch")
ref = pytest.importorskip("torch_reference_models")


def _folder(root: Path, seed: int) -> None:
    """Two classes x 6 images of 40x36 pixels: class 1 brighter than class 0."""
    rng = np.random.default_rng(seed)
    for c in range(2):
        for i in range(6):
            pixels = np.clip(rng.integers(0, 160, (36, 40, 3)) + 90 * c, 0, 255).astype(np.uint8)
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def test_da_run_dann_from_imported_resnet18_on_image_folders(tmp_path):
    data = tmp_path / "data"
    _folder(data / "src", 0)
    _folder(data / "tgt", 1)
    weights = tmp_path / "resnet18.pth"
    torch.save(ref.randomize_(ref.resnet18(), seed=0).state_dict(), weights)
    results = tmp_path / "results"
    args = ["run", "digits_rotate", "-m", "dann", "--steps", "5", "--results-dir", str(results),
            "--set", "source=imagefolder/src@32", "--set", "target=imagefolder/tgt@32", "--set", f"data_dir={data}",
            "--set", "model=resnet18", "--set", f"model_kwargs={{'pretrained': {str(weights)!r}}}",
            "--set", "batch_size=4", "--set", "eval_batch_size=8", "--set", "bottleneck_dim=16"]
    cli = CliRunner()
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert f"pretrained {weights} -> resnet18: copied" in first.output
    [record_path] = list(results.rglob("seed0.json"))
    record = json.loads(record_path.read_text())
    assert record["config"]["model_kwargs"]["pretrained"] == str(weights)
    assert record["input_files"]["model_kwargs.pretrained"]["sha256"] is not None
    losses = [h["loss"] for h in record["history"] if "loss" in h]
    assert losses and np.all(np.isfinite(losses))
    m = record["metrics"]  # evaluated on the 12 target images of 2 classes (6 each)
    assert len(m["target_test_per_class_accuracy"]) == 2
    assert m["target_test_accuracy"] * 12 == pytest.approx(round(m["target_test_accuracy"] * 12))
    assert m["target_test_accuracy"] == pytest.approx(np.mean(m["target_test_per_class_accuracy"]))
    again = cli.invoke(app, args)  # same file: the record is reused, nothing trains
    assert again.exit_code == 0 and "pretrained" not in again.output, again.output
    torch.save(ref.randomize_(ref.resnet18(), seed=1).state_dict(), weights)  # other weights, same path
    changed = cli.invoke(app, args)
    assert changed.exit_code == 2 and "sha256" in changed.output and "Traceback" not in changed.output, changed.output
