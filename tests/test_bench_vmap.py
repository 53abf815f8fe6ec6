"""K seeds in one vmapped program == K separate train() runs."""

import numpy as np
import pytest

from da_framework.bench.vmap_seeds import resolve_execution, train_seeds
from da_framework.config import ConfigError, ExperimentConfig
from da_framework.train import train

TINY = dict(model="lenet", model_kwargs={"channels": (4, 8), "dense": 32}, bottleneck_dim=16, batch_size=16, log_every=3)


@pytest.mark.parametrize("execution", ["vmap", "unroll"])
def test_vmapped_seeds_match_separate_runs(execution):
    cfg = ExperimentConfig(method="dann", steps=6, **TINY)
    seeds = [0, 3]
    together = train_seeds(cfg, seeds, execution=execution)
    assert together[0].compile_count == 1
    for s, res in zip(seeds, together):
        alone = train(cfg.replace(seed=s))
        assert res.config.seed == s
        assert [h["step"] for h in res.history] == [h["step"] for h in alone.history]
        for h_v, h_a in zip(res.history, alone.history):
            for k, v in h_a.items():
                if k.startswith("loss") or k == "grad_norm":
                    np.testing.assert_allclose(h_v[k], v, rtol=1e-4, atol=1e-5, err_msg=f"seed {s} {k}")
        # accuracies: equal up to at most one flipped prediction from float reassociation
        n_test = 1 / 180
        assert abs(res.metrics["target_test_accuracy"] - alone.metrics["target_test_accuracy"]) <= n_test + 1e-12
        assert abs(res.metrics["source_val_accuracy"] - alone.metrics["source_val_accuracy"]) <= n_test + 1e-12
    # different seeds really differ
    assert together[0].history[0]["loss"] != together[1].history[0]["loss"]


def test_vmapped_seeds_reject_bad_input():
    with pytest.raises(ConfigError, match="distinct"):
        train_seeds(ExperimentConfig(**TINY), [1, 1])
    with pytest.raises(ConfigError, match="unknown seed execution 'scan'; valid: auto, vmap, unroll"):
        train_seeds(ExperimentConfig(**TINY), [1, 2], execution="scan")


def test_auto_execution_unrolls_on_cpu_and_vmaps_on_accelerators():
    assert [resolve_execution("auto", b) for b in ("cpu", "gpu", "tpu")] == ["unroll", "vmap", "vmap"]
    assert resolve_execution("vmap", "cpu") == "vmap" and resolve_execution("unroll", "gpu") == "unroll"


def test_vmapped_seeds_take_several_sources_as_train_does():
    """The runner is built from the loop's pieces, so a 2-source, GroupDRO run vmaps too and matches train()."""
    cfg = ExperimentConfig(source="digits/source,digits/blur", target="digits/rotate", method="group_dro(eta=0.1)",
                           steps=3, model="mlp", model_kwargs={"hidden": (16,)}, batch_size=8, log_every=1)
    (res,) = train_seeds(cfg, [2])
    alone = train(cfg.replace(seed=2))
    for h_v, h_a in zip(res.history, alone.history):
        for k in ("loss", "loss/group_dro/q0", "loss/group_dro/q1"):
            if k in h_a:
                np.testing.assert_allclose(h_v[k], h_a[k], rtol=1e-5, err_msg=k)
    assert set(res.metrics) == set(alone.metrics) and "source_val_accuracy/digits/blur" in res.metrics
    np.testing.assert_allclose(np.asarray(res.state.term_states["group_dro"]),
                               np.asarray(alone.state.term_states["group_dro"]), rtol=1e-5)
