"""DomainBed's SagNet, MTL and ARM in the sweep: names, search spaces, the per-algorithm model
settings, and one short run of each through the sweep's own configs on the embedded rdigits."""

from __future__ import annotations

import numpy as np
import pytest

from da_framework.bench.domainbed import ALGORITHMS, domainbed_space, domainbed_sweep
from da_framework.bench.sweep import expand_sweep, validate_sweep
from da_framework.train import train


def test_the_three_are_in_the_sweep_with_their_spaces_and_models(tmp_path):
    assert len(ALGORITHMS) == 28
    assert domainbed_space("sagnet")["sagnet.sag_w_adv"] == "log10_uniform(-2, 1)"
    assert domainbed_space("mtl")["mtl.mtl_ema"] == "choice([0.5, 0.9, 0.99, 1.0])"
    assert "batch_size" not in domainbed_space("arm") and "batch_size" in domainbed_space("mtl")
    sweep = validate_sweep(domainbed_sweep("rdigits", ["SagNet", "MTL", "ARM"], steps=2, samples=2, seeds=(0,),
                                           leave_one_out=False))
    runs = expand_sweep(sweep, tmp_path)
    by_method = {}
    for r in runs:
        by_method.setdefault(r.path.parent.parent.name, []).append(r.config)  # <method>/sample<k>/seed<s>.json
    assert {c.model for c in by_method["sagnet"]} == {"mnist_cnn"}
    assert {c.model for c in by_method["mtl"]} == {"mtl"}
    assert {(c.model, c.batch_size, c.model_kwargs["support_size"]) for c in by_method["arm"]} == {("arm", 64, 64)}
    sampled = [c.batch_size for c in by_method["mtl"]]
    assert len(set(sampled)) > 1  # MTL's batch size is searched, ARM's is not


@pytest.mark.parametrize("algorithm", ["SagNet", "MTL", "ARM"])
def test_each_trains_from_its_sweep_config(tmp_path, algorithm):
    sweep = validate_sweep(domainbed_sweep("rdigits", [algorithm], steps=2, samples=1, seeds=(0,),
                                           leave_one_out=False))
    run = expand_sweep(sweep, tmp_path)[0]
    config = run.config.replace(eval_every=0, batch_size=8, eval_batch_size=64,
                                **({"model_kwargs": {"featurizer": "mnist_cnn", "support_size": 8}}
                                   if algorithm == "ARM" else {}))
    result = train(config)
    assert result.compile_count == 1 and np.isfinite(result.history[0]["loss"])
