"""DomainBed's protocol on the embedded rotated digits (no download; no published anchor).

The RotatedMNIST sweep's structure (6 test environments + 15 leave-one-out pairs, random
hyper-parameter samples, trials, three selection rules) on ``rdigits``, scikit-learn's 8x8
digits upscaled and rotated, so the whole protocol runs on a laptop CPU. Defaults here are
small: 300 steps, 2 samples, ERM and IRM; change with ``DA_DG_STEPS``, ``DA_DG_SAMPLES`` and
``DA_DG_ALGORITHMS`` (comma-separated DomainBed names).

Run:    da bench rdigits_domainbed --results-dir results
Plan:   da bench rdigits_domainbed --plan
Report: da report results/rdigits_domainbed_steps300_samples2
"""

from da_framework.bench.domainbed import domainbed_sweep_from_env


def get_sweep() -> dict:
    """A small DomainBed-style sweep over the rdigits environments (sizes from the environment)."""
    return domainbed_sweep_from_env("rdigits", "ERM,IRM", steps=300, samples=2, seeds=(0, 1))
