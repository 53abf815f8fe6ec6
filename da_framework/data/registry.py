"""Domains looked up by name (``da list`` shows them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from da_framework.data.domain import Domain, DomainError

DomainFactory = Callable[..., Domain]
DomainResolver = Callable[[str, "str | None"], Domain]


@dataclasses.dataclass(frozen=True)
class DomainEntry:
    """A registered domain: how to build it and what it is."""

    name: str
    factory: DomainFactory
    description: str
    needs_download: bool


_DOMAINS: dict[str, DomainEntry] = {}
# name prefix -> (resolver(name, data_dir) -> Domain, the pattern shown in errors)
_RESOLVERS: dict[str, tuple[DomainResolver, str]] = {}


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


def register_domain_resolver(prefix: str, pattern: str) -> Callable[[DomainResolver], DomainResolver]:
    """Registers ``resolver(name, data_dir) -> Domain`` for names starting with ``prefix`` not registered by name.

    For families of names that cannot be listed, e.g. ``"imagefolder/<folder>"`` or a size
    suffix ``"office31/amazon@64"``.  The resolver raises :class:`DomainError` for a name
    it does not know.

    Args:
      prefix: e.g. ``"imagefolder/"``.
      pattern: how such names look, shown in the unknown-domain error.
    """

    def decorator(resolver: DomainResolver) -> DomainResolver:
        if prefix in _RESOLVERS:
            raise DomainError(f"domain prefix {prefix!r} is already registered")
        _RESOLVERS[prefix] = (resolver, pattern)
        return resolver

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

    Names not registered as such go to the resolver of their prefix
    (:func:`register_domain_resolver`).

    Raises:
      DomainError: for an unknown name; the message lists the valid names and patterns.
    """
    _load_builtin_domains()
    if name in _DOMAINS:
        return _DOMAINS[name].factory(data_dir=data_dir)
    for prefix, (resolver, _) in _RESOLVERS.items():
        if name.startswith(prefix):
            return resolver(name, data_dir)
    patterns = "".join(f", {p}" for _, p in _RESOLVERS.values())
    raise DomainError(f"unknown domain {name!r}; valid domains: {', '.join(sorted(_DOMAINS))}{patterns}")


# The modules whose @register_domain decorators define the built-in domains, imported on
# first lookup (by name: the data package imports no other package of the library).
BUILTIN_DOMAIN_MODULES = (
    "da_framework.data.catalog",
    "da_framework.data.digits",
    "da_framework.data.local",
    "da_framework.data.local_cifar",
    "da_framework.data.local_imdb",
    "da_framework.data.image_folder",
    "da_framework.data.image_datasets",
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
