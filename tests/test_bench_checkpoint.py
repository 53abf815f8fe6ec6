"""Reproducibility of single runs: determinism on CPU and checkpoint resume == uninterrupted run."""

import numpy as np
import pytest

from da_framework.config import ConfigError, ExperimentConfig
from da_framework.train import train
from da_framework.train.loop import params_checksum

TINY = dict(model="lenet", model_kwargs={"channels": (4, 8), "dense": 32}, bottleneck_dim=16, batch_size=16, log_every=2)


class _Killed(RuntimeError):
    pass


# Determinism (same config + seed -> identical metrics) is tested through `da reproduce` in
# tests/test_bench_sweep.py::test_reproduce_detects_match_and_mismatch.


@pytest.mark.parametrize("method", ["dann", pytest.param("mcd", marks=pytest.mark.slow)])  # mcd: its own trainer, masked optimiser updates
def test_resume_from_checkpoint_matches_uninterrupted(tmp_path, method):
    base = ExperimentConfig(method=method, steps=10, eval_every=5, **TINY)
    full = train(base)
    cfg = base.replace(checkpoint_every=4, checkpoint_dir=str(tmp_path / "ckpt"))

    def die(step, metrics):
        if step == 6:  # after the checkpoint at step 4, before the end
            raise _Killed

    with pytest.raises(_Killed):
        train(cfg, on_log=die)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["4"]
    resumed = train(cfg)
    assert resumed.metrics == full.metrics
    assert resumed.history == full.history
    assert params_checksum(resumed.state) == params_checksum(full.state)
    np.testing.assert_array_equal(int(resumed.state.step), 10)


def test_checkpoint_of_a_different_run_is_refused(tmp_path):
    cfg = ExperimentConfig(method="source_only", steps=3, checkpoint_every=2, checkpoint_dir=str(tmp_path), **TINY)
    train(cfg)
    with pytest.raises(ConfigError, match="different run"):
        train(cfg.replace(seed=1))


def test_checkpoint_every_needs_a_dir():
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        ExperimentConfig(checkpoint_every=5)


def test_checkpoint_with_another_state_structure_is_a_one_line_error(tmp_path):
    """A checkpoint of an older train-state layout ('extras' where 'term_states' is now) is refused clearly."""
    import jax.numpy as jnp

    from da_framework.train.checkpoint import open_checkpoints, restore_latest, save_checkpoint

    config = ExperimentConfig(checkpoint_every=1, checkpoint_dir=str(tmp_path / "ck"))
    manager = open_checkpoints(config)
    save_checkpoint(manager, 1, {"step": jnp.ones(()), "extras": {"t": jnp.ones(3)}}, [], config)
    with pytest.raises(ConfigError, match="does not fit this run's train state.*fresh checkpoint_dir"):
        restore_latest(manager, {"step": jnp.ones(()), "term_states": {"t": jnp.ones(3)}}, config)
