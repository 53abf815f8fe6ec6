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


STATEFUL = EXAMPLE.parent / "moving_centroids.py"


def _np_moved(old, feats, labels, theta):
    new = old.copy()
    for k in range(old.shape[0]):
        if np.any(labels == k):
            new[k] = theta * old[k] + (1 - theta) * feats[labels == k].mean(0)
    return new


def test_stateful_example_is_one_short_file_and_matches_numpy_over_two_steps():
    import jax
    import jax.numpy as jnp

    from da_framework.losses import LossInputs, get_loss

    assert len(STATEFUL.read_text().splitlines()) < 60
    _load_file(STATEFUL)
    term = get_loss("moving_centroids").term(theta=0.6)
    rng = np.random.default_rng(1)
    state_np = (np.zeros((3, 2)), np.zeros((3, 2)))
    state = None
    for step in range(2):
        fs, ft = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
        ys = np.array([0, 0, 1, 1, 0])  # class 2 never in the source batch: its centroid stays
        lt = rng.normal(size=(4, 3))
        inputs = LossInputs(jnp.asarray(fs, jnp.float32), jnp.asarray(ft, jnp.float32), jnp.zeros((5, 3)),
                            jnp.asarray(lt, jnp.float32), jnp.asarray(ys), jnp.zeros(()), jax.random.key(0))
        if state is None:
            state = term.init(jax.random.key(0), inputs)
        loss, new, metrics = term.apply(state, inputs)
        state = state._replace(state=new)
        pseudo = lt.argmax(1)
        state_np = (_np_moved(state_np[0], fs, ys, 0.6), _np_moved(state_np[1], ft, pseudo, 0.6))
        np.testing.assert_allclose(loss, ((state_np[0] - state_np[1]) ** 2).sum(), rtol=1e-5)
        np.testing.assert_allclose(new[0], state_np[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(new[1], state_np[1], rtol=1e-5, atol=1e-7)
        assert int(metrics["target_classes"]) == len(set(pseudo.tolist()))
    assert np.all(np.asarray(new[0][2]) == 0.0)


def test_stateful_plugin_term_runs_by_name_from_cli(tmp_path):
    import json

    args = ["run", "digits_rotate", "--plugin", str(STATEFUL), "--method", "cross_entropy + 0.1*moving_centroids",
            "--steps", "3", "--set", "model_kwargs={'channels': (4, 8), 'dense': 32}", "--set", "batch_size=8",
            "--set", "log_every=1", "--results-dir", str(tmp_path)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (record,) = tmp_path.rglob("*.json")
    history = json.loads(record.read_text())["history"]
    logged = [h for h in history if "loss/moving_centroids" in h]
    assert len(logged) == 3 and all("loss/moving_centroids/target_classes" in h for h in logged)
    assert logged[0]["loss/moving_centroids"] != logged[-1]["loss/moving_centroids"]


def _load_file(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
