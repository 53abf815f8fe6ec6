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


def _load_builtin_domains() -> None:
    # Importing the modules runs their @register_domain decorators (once).
    from da_framework.data import amazon_reviews, catalog, digits, local, text_synthetic  # noqa: F401
    from da_framework.detection import synthetic  # noqa: F401
