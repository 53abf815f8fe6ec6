"""Domains and data pipelines."""

from da_framework.data.domain import (
    ArraySource,
    Batch,
    Domain,
    DomainError,
    MappedSource,
    RandomMappedSource,
    batch_iterator,
)
from da_framework.data.registry import domain_entries, domain_names, get_domain, register_domain

__all__ = [
    "ArraySource",
    "Batch",
    "Domain",
    "DomainError",
    "MappedSource",
    "RandomMappedSource",
    "batch_iterator",
    "domain_entries",
    "domain_names",
    "get_domain",
    "register_domain",
]
