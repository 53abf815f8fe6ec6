"""Domains looked up by name (``da list`` shows them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from da_framework.data.domain import Domain, DomainError

DomainFactory = Callable[..., Domain]


@dataclasses.dataclass(frozen=True)
class DomainEntry:
    """A registered domain: how to build it and what it is."""

    name: str
    factory: DomainFactory
    description: str
    needs_download: bool


_DOMAINS: dict[str, DomainEntry] = {}


def register_domain(
    name: str, *, description: str, needs_download: bool = False
) -> Callable[[DomainFactory], DomainFactory]:
    """Registers ``factory(data_dir: str | None = None) -> Domain`` under ``name``.

    Args:
      name: the name experiments and the CLI use, e.g. ``"digits/rotate"``.
      description: one line shown by ``da list``.
      needs_download: True when the domain reads a prepared tfds dataset from disk.
    """

    def decorator(factory: DomainFactory) -> DomainFactory:
        if name in _DOMAINS:
            raise DomainError(f"domain {name!r} is already registered")
        _DOMAINS[name] = DomainEntry(name, factory, description, needs_download)
        return factory

    return decorator


def domain_names() -> list[str]:
    """All registered domain names, sorted."""
    _load_builtin_domains()
    return sorted(_DOMAINS)


def domain_entries() -> list[DomainEntry]:
    """All registered domains, sorted by name."""
    _load_builtin_domains()
    return [_DOMAINS[n] for n in sorted(_DOMAINS)]


def get_domain(name: str, data_dir: str | None = None) -> Domain:
    """Builds the domain registered as ``name``.

    Raises:
      DomainError: for an unknown name; the message lists the valid names.
    """
    _load_builtin_domains()
    if name not in _DOMAINS:
        raise DomainError(
            f"unknown domain {name!r}; valid domains: {', '.join(sorted(_DOMAINS))}"
        )
    return _DOMAINS[name].factory(data_dir=data_dir)


# The modules whose @register_domain decorators define the built-in domains, imported on
# first lookup (by name: the data package imports no other package of the library).
BUILTIN_DOMAIN_MODULES = (
    "da_framework.data.catalog",
    "da_framework.data.digits",
    "da_framework.data.local",
    "da_framework.data.text_synthetic",
    "da_framework.data.voc2007",
    "da_framework.data.amazon_reviews",
    "da_framework.data.dg_mnist",
    "da_framework.data.dg_digits",
    "da_framework.detection.synthetic",
)


def _load_builtin_domains() -> None:
    """Imports :data:`BUILTIN_DOMAIN_MODULES` (once; Python caches the imports)."""
    import importlib

    for module in BUILTIN_DOMAIN_MODULES:
        importlib.import_module(module)
