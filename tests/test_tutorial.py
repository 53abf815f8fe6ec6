"""Keeps docs/writing_a_loss.md true: its loss matches NumPy and runs by name from the CLI."""

import importlib.util
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from da_framework.cli import app

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "mean_gap_loss.py"


def _load():
    spec = importlib.util.spec_from_file_location("mean_gap_loss", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_var_gap_matches_numpy():
    mean_var_gap = _load().mean_var_gap
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)), rng.normal(1.0, 2.0, size=(12, 4))
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + ((x.var(0) - y.var(0)) ** 2).sum()
    np.testing.assert_allclose(mean_var_gap(x, y), ref, rtol=1e-5)
    np.testing.assert_allclose(mean_var_gap(x, x), 0.0, atol=1e-6)


def test_plugin_loss_runs_from_cli(tmp_path):
    args = ["run", "digits_rotate", "--plugin", str(EXAMPLE), "--method", "cross_entropy + 1.0*mean_var_gap",
            "--steps", "2", "--set", "model_kwargs={'channels': (4, 8), 'dense': 32}", "--set", "batch_size=8",
            "--results-dir", str(tmp_path)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert len(list(tmp_path.rglob("*.json"))) == 1
