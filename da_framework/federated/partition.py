"""Splitting data over clients: IID, label skew, quantity skew and domain skew.

Every partition function is a deterministic NumPy function of its inputs and a
``numpy.random.Generator`` and returns one index array per client; every index of the
pool is used exactly once.

* :func:`iid_partition` — a random permutation cut into near-equal parts.
* :func:`dirichlet_label_partition` — label skew: for every class c, the class's examples
  are divided over clients in proportions p_c ~ Dir(alpha * 1_K) (Hsu, Qi & Brown,
  "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
  Classification", arXiv 1909.06335, 2019).  Small alpha: each client sees few classes;
  alpha -> inf: every client gets each class in proportion 1/K (IID).
* :func:`quantity_skew_partition` — client sizes in proportions q ~ Dir(alpha * 1_K), IID
  content (Li, Diao, Chen & He, "Federated Learning on Non-IID Data Silos: An
  Experimental Study", ICDE 2022, section 3).
* :func:`domain_clients` — domain skew (feature-shift non-IID): each client holds part of
  exactly one domain, e.g. ``digits/source``, ``digits/rotate``, ``digits/blur``.

:func:`partition_table` prints who holds what.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from rich.table import Table

from da_framework.data.domain import ArraySource, Domain
from da_framework.data.registry import get_domain
from da_framework.errors import UserError


class PartitionError(UserError):
    """Raised for a partition that cannot be made (too few examples, bad alpha, ...)."""


@dataclasses.dataclass(frozen=True)
class Client:
    """One client's private data.

    Attributes:
      name: display name (``client007``).
      domain: the domain its data comes from.
      data: ``{"image": (n, ...), "label": (n,)}`` NumPy arrays (labels of an unlabelled
        client are kept only for evaluation tables and never reach training).
      labeled: whether the client's labels may be used in training.
    """

    name: str
    domain: str
    data: dict[str, np.ndarray]
    labeled: bool = True

    @property
    def num_examples(self) -> int:
        """n_k, the client's example count."""
        return int(len(self.data["label"]))


def iid_partition(num_examples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random near-equal split of ``range(num_examples)`` over ``num_clients``."""
    _check_counts(num_examples, num_clients)
    return [np.sort(p) for p in np.array_split(rng.permutation(num_examples), num_clients)]


def dirichlet_label_partition(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 1, max_tries: int = 100
) -> list[np.ndarray]:
    """Label-skew split: class c's examples go to clients in proportions Dir(alpha).

    Draws are repeated (up to ``max_tries``) until every client has ``min_size`` examples.

    Raises:
      PartitionError: for alpha <= 0, or when no draw gives every client ``min_size``.
    """
    labels = np.asarray(labels)
    _check_counts(len(labels), num_clients)
    if not alpha > 0:
        raise PartitionError(f"dirichlet alpha must be > 0, got {alpha}")
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).round().astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise PartitionError(
        f"no Dirichlet({alpha}) label split of {len(labels)} examples gave all {num_clients} clients "
        f">= {min_size} examples in {max_tries} draws; use fewer clients, a larger alpha or min_size=0"
    )


def quantity_skew_partition(
    num_examples: int, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 1
) -> list[np.ndarray]:
    """Quantity-skew split: sizes ~ Dir(alpha) proportions (each >= ``min_size``), IID content."""
    _check_counts(num_examples, num_clients)
    if not alpha > 0:
        raise PartitionError(f"quantity-skew alpha must be > 0, got {alpha}")
    if min_size * num_clients > num_examples:
        raise PartitionError(f"{num_examples} examples cannot give {num_clients} clients {min_size} each")
    spare = num_examples - min_size * num_clients
    sizes = min_size + np.floor(rng.dirichlet(np.full(num_clients, alpha)) * spare).astype(int)
    sizes[np.argmax(sizes)] += num_examples - sizes.sum()  # rounding remainder
    perm = rng.permutation(num_examples)
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def _check_counts(num_examples: int, num_clients: int) -> None:
    if num_clients <= 0:
        raise PartitionError(f"num_clients must be positive, got {num_clients}")
    if num_examples < num_clients:
        raise PartitionError(f"cannot split {num_examples} examples over {num_clients} clients")


def _arrays(domain: Domain, split: str) -> dict[str, np.ndarray]:
    source = domain.split(split)
    if not isinstance(source, ArraySource):
        raise PartitionError(
            f"domain {domain.name!r} is not held in memory; federated simulation needs in-memory (ArraySource) domains"
        )
    return {domain.input_key: np.asarray(source.arrays[domain.input_key]), "label": np.asarray(source.arrays["label"])}


def partition_clients(
    kind: str,
    domain_name: str,
    num_clients: int,
    seed: int,
    alpha: float = 0.5,
    split: str = "train",
    data_dir: str | None = None,
) -> list[Client]:
    """Clients over one domain's split with the ``kind`` partition (iid, dirichlet, quantity)."""
    domain = get_domain(domain_name, data_dir)
    arrays = _arrays(domain, split)
    rng = np.random.default_rng([seed, 0x5EED])
    n = len(arrays["label"])
    if kind == "iid":
        parts = iid_partition(n, num_clients, rng)
    elif kind == "dirichlet":
        parts = dirichlet_label_partition(arrays["label"], num_clients, alpha, rng)
    elif kind == "quantity":
        parts = quantity_skew_partition(n, num_clients, alpha, rng)
    else:
        raise PartitionError(f"unknown partition {kind!r}; valid: iid, dirichlet, quantity (or domain_clients)")
    return [Client(f"client{k:03d}", domain_name, {f: v[p] for f, v in arrays.items()}) for k, p in enumerate(parts)]


def domain_clients(
    domains: Sequence[str],
    num_clients: int,
    seed: int,
    target_domains: Sequence[str] = (),
    split: str = "train",
    data_dir: str | None = None,
) -> list[Client]:
    """Domain skew: clients dealt round-robin over ``domains + target_domains``; each holds an
    IID share of one domain's split.  Clients of ``target_domains`` are unlabelled."""
    names = list(domains) + list(target_domains)
    if num_clients < len(names):
        raise PartitionError(f"{num_clients} clients cannot cover {len(names)} domains; need one client per domain")
    owners = [k % len(names) for k in range(num_clients)]
    rng = np.random.default_rng([seed, 0xD0])
    clients: list[Client] = []
    per_domain: dict[int, list[np.ndarray]] = {}
    for d, name in enumerate(names):
        arrays = _arrays(get_domain(name, data_dir), split)
        parts = iid_partition(len(arrays["label"]), owners.count(d), rng)
        per_domain[d] = [{f: v[p] for f, v in arrays.items()} for p in parts]  # type: ignore[misc]
    taken = {d: 0 for d in per_domain}
    for k, d in enumerate(owners):
        data = per_domain[d][taken[d]]
        taken[d] += 1
        clients.append(Client(f"client{k:03d}", names[d], data, labeled=d < len(domains)))  # type: ignore[arg-type]
    return clients


def partition_table(clients: Sequence[Client], num_classes: int = 10, title: str = "federated clients") -> Table:
    """A rich table: client, domain, labelled?, n, and the per-class example counts."""
    table = Table(title=title)
    for col in ("client", "domain", "labels", "n"):
        table.add_column(col, justify="right" if col == "n" else "left", no_wrap=col in ("client", "domain"))
    for c in range(num_classes):
        table.add_column(str(c), justify="right")
    for cl in clients:
        counts = np.bincount(cl.data["label"], minlength=num_classes)
        table.add_row(cl.name, cl.domain, "yes" if cl.labeled else "no", str(cl.num_examples), *map(str, counts))
    sizes = [c.num_examples for c in clients]
    table.caption = f"{len(clients)} clients, {sum(sizes)} examples, size min/median/max {min(sizes)}/{int(np.median(sizes))}/{max(sizes)}"
    return table
