"""K hyper-parameter samples in one compiled program == K separate train() runs."""

import functools

import numpy as np
import pytest

from da_framework.bench.vmap_samples import check_group, differing, sample_numbers, train_samples
from da_framework.config import ConfigError, ExperimentConfig
from da_framework.train import train

# two training environments and IRM with DomainBed's Adam reset, on a tiny MLP
DG = {"source": "digits/source,digits/blur", "target": "digits/rotate", "model": "mlp", "model_kwargs": {"hidden": (16,)},
      "batch_size": 8, "log_every": 1, "steps": 6, "optimizer": "adam"}


def _irm(lam: float, anneal: int, weight: float = 1.0) -> str:
    return f"cross_entropy + {weight}*irm(irm_lambda={lam}, irm_penalty_anneal_iters={anneal}, steps_of=6)"


CONFIGS = (
    ExperimentConfig(method=_irm(10.0, 2), learning_rate=1e-3, seed=0, **DG),
    ExperimentConfig(method=_irm(100.0, 4, 0.5), learning_rate=3e-3, seed=1, **DG),
    ExperimentConfig(method=_irm(1.0, 2), learning_rate=1e-3, seed=1, **DG),
)


@functools.cache
def _alone(i: int):
    return train(CONFIGS[i])


@pytest.mark.parametrize("execution", ["unroll", "vmap"])
def test_samples_in_one_program_match_separate_runs(execution):
    configs = list(CONFIGS)
    assert differing(configs) == ["irm.irm_lambda", "irm.irm_penalty_anneal_iters", "irm.weight", "learning_rate"]
    together = train_samples(configs, execution=execution)
    assert together[0].compile_count == 1
    for i, (cfg, res) in enumerate(zip(configs, together)):
        alone = _alone(i)
        assert res.config == cfg
        assert [h["step"] for h in res.history] == [h["step"] for h in alone.history]
        for h_v, h_a in zip(res.history, alone.history):
            for k, v in h_a.items():
                if k.startswith("loss") or k == "grad_norm":
                    np.testing.assert_allclose(h_v[k], v, rtol=2e-4, atol=1e-6, err_msg=f"{cfg.method} {k} step {h_a['step']}")
        assert abs(res.metrics["target_test_accuracy"] - alone.metrics["target_test_accuracy"]) <= 1 / 180 + 1e-12
    # the samples really differ: same seed, other lambda -> another penalty-weighted loss after the switch
    last = [r.history[-2]["loss"] for r in together]
    assert len({round(v, 6) for v in last}) == 3


def test_sample_numbers_name_what_may_vary():
    cfg = ExperimentConfig(method=_irm(10.0, 2, 0.5), learning_rate=2e-3, **DG)
    got = sample_numbers(cfg)
    assert got["learning_rate"] == 2e-3 and got["irm.weight"] == 0.5 and got["cross_entropy.weight"] == 1.0
    assert got["irm.irm_lambda"] == 10.0 and got["irm.irm_penalty_anneal_iters"] == 2.0 and got["irm.steps_of"] == 6.0
    assert differing([cfg, cfg.replace(seed=3)]) == []


def test_groups_that_cannot_share_a_program_are_one_line_errors():
    a = ExperimentConfig(method=_irm(10.0, 2), **DG)
    with pytest.raises(ConfigError, match="these differ too: batch_size; run those samples separately"):
        check_group([a, a.replace(batch_size=16, method=_irm(1.0, 2))])
    with pytest.raises(ConfigError, match="same loss terms"):
        check_group([a, a.replace(method="cross_entropy + 1.0*vrex")])
    with pytest.raises(ConfigError, match="same seed and numbers"):
        check_group([a, a.replace()])
    with pytest.raises(ConfigError, match="same loss terms"):  # a stateful term's hyper-parameters are structure
        g = ExperimentConfig(method="group_dro(eta=0.1)", **DG)
        check_group([g, g.replace(method="group_dro(eta=0.01)")])
    # a hyper-parameter the loss reads as a Python number cannot be traced: said, not a traceback
    # EQRM keeps the learning rate in the optimiser state (it switches it at its reset): it cannot vary
    eq = [ExperimentConfig(method="eqrm", learning_rate=lr, lr_schedule="constant", **DG) for lr in (1e-3, 2e-3)]
    with pytest.raises(ConfigError, match="learning rate cannot vary within one program"):
        train_samples(eq)
    # (IRM's steps_of: the length its anneal counts in, checked and converted as a Python float)
    runs = [a.replace(method=_irm(10.0, 2).replace("steps_of=6", f"steps_of={n}")) for n in (6, 12)]
    with pytest.raises(ConfigError, match=r"varying number \(irm.steps_of\) is read as a Python value"):
        train_samples(runs)
