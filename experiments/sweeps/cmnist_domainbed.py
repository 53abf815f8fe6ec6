"""ColoredMNIST as DomainBed runs it: 17 algorithms x 3 test environments (+ 3 leave-one-out
pairs) x 20 hyper-parameter samples x 3 trials, with its three model-selection rules.

Run:    DA_DATA_DIR=../shared/data da bench cmnist_domainbed --results-dir results
Plan:   da bench cmnist_domainbed --plan          (every run and its sampled values; trains nothing)
Report: da report results/cmnist_domainbed        (training-domain, leave-one-out and oracle tables)

Protocol values: ``da_framework/bench/domainbed.py`` (Adam 1e-3, batch 64 per environment, 5001
steps, MNIST_CNN, an evaluation every 100 steps). A GPU job (9,000 runs at the defaults); on
a CPU shorten with ``DA_DG_STEPS`` (e.g. 300), ``DA_DG_SAMPLES`` (e.g. 2), ``DA_DG_SEEDS`` (e.g. 0),
``DA_DG_LEAVE_ONE_OUT=0`` (main runs only), ``DA_DG_ALGORITHMS``
(comma-separated DomainBed names, e.g. ``ERM,IRM``) and ``DA_DG_TEST_ENVS`` (comma-separated
held-out environments, e.g. ``0,75``); ``DA_DG_PER_TRIAL=0`` draws one value set
per sample for all trials (then ``--vmap-seeds`` trains a sample's trials as one program).
See docs/domain_generalisation.md.
"""

from da_framework.bench.domainbed import domainbed_sweep_from_env


def get_sweep() -> dict:
    """DomainBed's sweep on cmnist (sizes from $DA_DG_STEPS, $DA_DG_SAMPLES, $DA_DG_SEEDS, $DA_DG_ALGORITHMS, $DA_DG_PER_TRIAL, $DA_DG_LEAVE_ONE_OUT, $DA_DG_TEST_ENVS)."""
    return domainbed_sweep_from_env("cmnist")
