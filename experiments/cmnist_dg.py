"""Domain generalisation, DomainBed's MNIST protocol: ColoredMNIST, test environment -90%.

Trains on the other environments (da_framework/bench/domainbed.py has the protocol and its
sources).  Run: da run cmnist_dg -m "cross_entropy + irm"  (other test environments:
--set source=... --set target=...; docs/domain_generalisation.md).
"""

from da_framework.bench.domainbed import domainbed_dg


def get_config() -> dict:
    """ColoredMNIST, test environment -90%."""
    return domainbed_dg("cmnist", "-90%")
