"""Domain generalisation, DomainBed's MNIST protocol: embedded rotated digits (no download), test environment 0 degrees.

Trains on the other environments (da_framework/bench/domainbed.py has the protocol and its
sources).  Run: da run rdigits_dg -m "cross_entropy + irm"  (other test environments:
--set source=... --set target=...; docs/domain_generalisation.md).
"""

from da_framework.bench.domainbed import domainbed_dg


def get_config() -> dict:
    """embedded rotated digits (no download), test environment 0 degrees."""
    return domainbed_dg("rdigits", "0")
