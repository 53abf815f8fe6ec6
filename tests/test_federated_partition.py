"""Client partitions: every index used once, label/quantity/domain skew behave as defined."""

import io

import numpy as np
import pytest
from rich.console import Console

from da_framework.federated.partition import (
    PartitionError,
    dirichlet_label_partition,
    domain_clients,
    iid_partition,
    partition_clients,
    partition_table,
    quantity_skew_partition,
)

LABELS = np.random.default_rng(0).integers(0, 10, 2000)


def _is_exact_cover(parts, n):
    flat = np.concatenate(parts)
    return len(flat) == n and np.array_equal(np.sort(flat), np.arange(n))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_uses_every_index_once(alpha):
    parts = dirichlet_label_partition(LABELS, 10, alpha, np.random.default_rng(1))
    assert _is_exact_cover(parts, len(LABELS)) and min(map(len, parts)) >= 1


def _mean_tv_to_global(parts):
    glob = np.bincount(LABELS, minlength=10) / len(LABELS)
    return np.mean([0.5 * np.abs(np.bincount(LABELS[p], minlength=10) / len(p) - glob).sum() for p in parts])


def test_dirichlet_skew_shrinks_as_alpha_grows_and_approaches_iid():
    tv = {a: _mean_tv_to_global(dirichlet_label_partition(LABELS, 10, a, np.random.default_rng(2))) for a in (0.1, 1.0, 1e4)}
    iid = _mean_tv_to_global(iid_partition(len(LABELS), 10, np.random.default_rng(2)))
    assert tv[0.1] > 0.5 > tv[1.0] > tv[1e4]
    # alpha -> inf: each client gets 1/K of every class, at least as balanced as a random IID split
    assert tv[1e4] < 0.05 and tv[1e4] <= iid
    sizes = [len(p) for p in dirichlet_label_partition(LABELS, 10, 1e4, np.random.default_rng(3))]
    assert max(abs(s - 200) for s in sizes) < 20


def test_iid_and_quantity_skew_cover_and_sizes():
    iid = iid_partition(103, 10, np.random.default_rng(0))
    assert _is_exact_cover(iid, 103) and {len(p) for p in iid} <= {10, 11}
    q = quantity_skew_partition(1000, 10, 0.3, np.random.default_rng(0), min_size=5)
    sizes = [len(p) for p in q]
    assert _is_exact_cover(q, 1000) and min(sizes) >= 5 and max(sizes) > 3 * np.median(sizes)


def test_partitions_are_deterministic_and_errors_are_clear():
    a = dirichlet_label_partition(LABELS, 5, 0.5, np.random.default_rng(7))
    b = dirichlet_label_partition(LABELS, 5, 0.5, np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(PartitionError, match="alpha"):
        dirichlet_label_partition(LABELS, 5, 0.0, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="cannot split"):
        iid_partition(3, 5, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="larger alpha"):
        dirichlet_label_partition(LABELS[:30], 25, 0.01, np.random.default_rng(0), min_size=2, max_tries=3)


def test_domain_skew_each_client_holds_one_domain_and_table_prints():
    clients = domain_clients(["digits/source", "digits/blur"], 5, seed=0, target_domains=["digits/rotate"])
    assert [c.domain for c in clients] == ["digits/source", "digits/blur", "digits/rotate", "digits/source", "digits/blur"]
    assert [c.labeled for c in clients] == [True, True, False, True, True]
    src = [c for c in clients if c.domain == "digits/source"]
    assert sum(c.num_examples for c in src) == 539  # the whole source train split, split in two
    assert not set(map(bytes, src[0].data["image"])) & set(map(bytes, src[1].data["image"]))
    out = io.StringIO()
    Console(file=out, width=200).print(partition_table(clients))
    text = out.getvalue()
    assert "digits/rotate" in text and "client004" in text and "5 clients" in text
    iid = partition_clients("iid", "digits/source", 4, seed=0)
    assert sum(c.num_examples for c in iid) == 539
