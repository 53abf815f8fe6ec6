"""DomainBed's published MNIST numbers, the anchors a DG report prints beside its own rows.

Source: facebookresearch/DomainBed, ``domainbed/results/2020_10_06_7df6f06/results.tex``
(Gulrajani & Lopez-Paz, ICLR 2021): test-environment accuracy in %, the mean over 3 trials of
the pick among 20 random hyper-parameter samples, MNIST_CNN, 5001 steps, under each of the three
selection rules (:mod:`da_framework.bench.dg_selection`).  Every number was read from that
file; each row's last value is the file's "Avg" column (``tests/test_domainbed_anchors.py``
checks it against the mean of the row, which catches a mistyped cell).

:func:`anchor_rows` gives the rows for a report table: one per algorithm of the table that
DomainBed published, named by :data:`da_framework.bench.domainbed.ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Sequence

SOURCE = "DomainBed results.tex (2020_10_06_7df6f06): 5001 steps, 20 hyper-parameter samples x 3 trials"

ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "cmnist": ("+90%", "+80%", "-90%"),
    "rmnist": ("0", "15", "30", "45", "60", "75"),
}

# (family, rule) -> algorithm -> per-environment values (ENVIRONMENTS order) + the file's Avg.
PUBLISHED: dict[tuple[str, str], dict[str, tuple[float, ...]]] = {
    ("cmnist", "training_domain"): {
        "ERM": (71.7, 72.9, 10.0, 51.5), "IRM": (72.5, 73.3, 10.2, 52.0), "GroupDRO": (73.1, 73.2, 10.0, 52.1),
        "Mixup": (72.7, 73.4, 10.1, 52.1), "MLDG": (71.5, 73.1, 9.8, 51.5), "CORAL": (71.6, 73.1, 9.9, 51.5),
        "MMD": (71.4, 73.1, 9.9, 51.5), "DANN": (71.4, 73.1, 10.0, 51.5), "CDANN": (72.0, 73.0, 10.2, 51.7),
        "MTL": (70.9, 72.8, 10.5, 51.4), "SagNet": (71.8, 73.0, 10.3, 51.7), "ARM": (82.0, 76.5, 10.2, 56.2),
        "VREx": (72.4, 72.9, 10.2, 51.8), "RSC": (71.9, 73.1, 10.0, 51.7),
    },
    ("cmnist", "leave_one_out"): {
        "ERM": (50.0, 50.1, 10.0, 36.7), "IRM": (46.7, 51.2, 23.1, 40.3), "GroupDRO": (50.1, 50.0, 10.2, 36.8),
        "Mixup": (36.6, 53.4, 10.2, 33.4), "MLDG": (50.1, 50.1, 10.0, 36.7), "CORAL": (49.5, 59.5, 10.2, 39.7),
        "MMD": (50.3, 50.0, 9.9, 36.8), "DANN": (49.9, 62.1, 10.0, 40.7), "CDANN": (63.2, 44.4, 9.9, 39.1),
        "MTL": (44.3, 50.7, 10.1, 35.0), "SagNet": (49.9, 49.7, 10.0, 36.5), "ARM": (50.0, 50.1, 10.2, 36.8),
        "VREx": (50.2, 50.5, 10.1, 36.9), "RSC": (49.6, 49.7, 10.1, 36.5),
    },
    ("cmnist", "oracle"): {
        "ERM": (71.8, 72.9, 28.7, 57.8), "IRM": (72.0, 72.5, 58.5, 67.7), "GroupDRO": (73.5, 73.0, 36.8, 61.1),
        "Mixup": (72.5, 73.9, 28.6, 58.4), "MLDG": (71.9, 73.5, 29.1, 58.2), "CORAL": (71.1, 73.4, 31.1, 58.6),
        "MMD": (69.0, 70.4, 50.6, 63.3), "DANN": (72.4, 73.9, 24.9, 57.0), "CDANN": (71.8, 72.9, 33.8, 59.5),
        "MTL": (71.2, 73.5, 28.0, 57.6), "SagNet": (72.1, 73.2, 29.4, 58.2), "ARM": (84.9, 76.8, 27.9, 63.2),
        "VREx": (72.8, 73.0, 55.2, 67.0), "RSC": (72.0, 73.2, 30.2, 58.5),
    },
    ("rmnist", "training_domain"): {
        "ERM": (95.9, 98.9, 98.8, 98.9, 98.9, 96.4, 98.0), "IRM": (95.5, 98.8, 98.7, 98.6, 98.7, 95.9, 97.7),
        "GroupDRO": (95.6, 98.9, 98.9, 99.0, 98.9, 96.5, 98.0), "Mixup": (95.8, 98.9, 98.9, 98.9, 98.8, 96.5, 98.0),
        "MLDG": (95.8, 98.9, 99.0, 98.9, 99.0, 95.8, 97.9), "CORAL": (95.8, 98.8, 98.9, 99.0, 98.9, 96.4, 98.0),
        "MMD": (95.6, 98.9, 99.0, 99.0, 98.9, 96.0, 97.9), "DANN": (95.0, 98.9, 99.0, 99.0, 98.9, 96.3, 97.8),
        "CDANN": (95.7, 98.8, 98.9, 98.9, 98.9, 96.1, 97.9), "MTL": (95.6, 99.0, 99.0, 98.9, 99.0, 95.8, 97.9),
        "SagNet": (95.9, 98.9, 99.0, 99.1, 99.0, 96.3, 98.0), "ARM": (96.7, 99.1, 99.0, 99.0, 99.1, 96.5, 98.2),
        "VREx": (95.9, 99.0, 98.9, 98.9, 98.7, 96.2, 97.9), "RSC": (94.8, 98.7, 98.8, 98.8, 98.9, 95.9, 97.6),
    },
    ("rmnist", "leave_one_out"): {
        "ERM": (95.3, 98.9, 98.9, 98.8, 98.5, 96.2, 97.7), "IRM": (94.5, 98.2, 98.7, 96.6, 98.4, 95.8, 97.0),
        "GroupDRO": (95.7, 98.7, 98.9, 98.6, 98.6, 95.3, 97.6), "Mixup": (94.8, 98.8, 98.9, 99.0, 98.9, 96.4, 97.8),
        "MLDG": (94.3, 98.8, 99.0, 98.8, 98.8, 96.0, 97.6), "CORAL": (95.7, 98.5, 98.9, 98.6, 98.8, 96.3, 97.8),
        "MMD": (95.8, 98.7, 99.0, 98.8, 98.7, 96.1, 97.8), "DANN": (95.1, 98.3, 98.5, 99.0, 98.6, 96.1, 97.6),
        "CDANN": (94.3, 98.4, 98.9, 98.7, 98.9, 95.7, 97.5), "MTL": (95.5, 98.6, 98.8, 99.0, 99.0, 95.6, 97.8),
        "SagNet": (94.0, 98.7, 98.9, 99.1, 98.8, 74.2, 94.0), "ARM": (95.8, 99.0, 99.0, 98.9, 98.8, 96.9, 98.1),
        "VREx": (95.8, 98.7, 98.5, 98.9, 74.0, 95.5, 93.6), "RSC": (94.6, 98.4, 99.0, 98.9, 98.8, 95.9, 97.6),
    },
    ("rmnist", "oracle"): {
        "ERM": (95.3, 98.7, 98.9, 98.7, 98.9, 96.2, 97.8), "IRM": (94.9, 98.7, 98.6, 98.6, 98.7, 95.2, 97.5),
        "GroupDRO": (95.9, 99.0, 98.9, 98.8, 98.6, 96.3, 97.9), "Mixup": (95.8, 98.7, 99.0, 98.8, 98.8, 96.6, 98.0),
        "MLDG": (95.7, 98.9, 98.8, 98.9, 98.6, 95.8, 97.8), "CORAL": (96.2, 98.8, 98.8, 98.8, 98.9, 96.4, 98.0),
        "MMD": (96.1, 98.9, 99.0, 98.8, 98.9, 96.4, 98.0), "DANN": (95.9, 98.9, 98.6, 98.7, 98.9, 96.3, 97.9),
        "CDANN": (95.9, 98.8, 98.7, 98.9, 98.8, 96.1, 97.9), "MTL": (96.1, 98.9, 99.0, 98.7, 99.0, 95.8, 97.9),
        "SagNet": (95.9, 99.0, 98.9, 98.6, 98.8, 96.3, 97.9), "ARM": (95.9, 99.0, 98.8, 98.9, 99.1, 96.7, 98.1),
        "VREx": (95.5, 99.0, 98.7, 98.8, 98.8, 96.4, 97.9), "RSC": (95.4, 98.6, 98.6, 98.9, 98.8, 95.4, 97.6),
    },
}


def domainbed_name(method: str) -> str | None:
    """DomainBed's name of a sweep method spec (``"cross_entropy + irm"`` -> ``"IRM"``), or None."""
    from da_framework.bench.domainbed import ALGORITHMS

    for name, spec in ALGORITHMS.items():
        if spec == method:
            return name
    return None


def anchor_rows(methods: Sequence[str], columns: Sequence[str], rule: str) -> list[list[str]]:
    """Rows ``["<name> (DomainBed)", cell, ...]`` for a report table's ``methods`` under ``rule``.

    Args:
      methods: the table's method specs, in row order.
      columns: its columns: test environments (``"cmnist/+90%"``) and ``"avg"``.
      rule: a :data:`~da_framework.bench.dg_selection.RULES` name.

    Returns:
      one row per method DomainBed published for the columns' family; a column it has no number
      for (another family, a subset of environments' average) is "–".  Empty when none apply.
    """
    families = {c.split("/", 1)[0] for c in columns if c != "avg"}
    if len(families) != 1 or (family := families.pop()) not in ENVIRONMENTS:
        return []
    table = PUBLISHED.get((family, rule), {})
    envs = ENVIRONMENTS[family]
    tests = [c.split("/", 1)[1] for c in columns if c != "avg"]
    rows = []
    for method in methods:
        name = domainbed_name(method)
        if name not in table:
            continue
        values = dict(zip(envs, table[name]))
        cells = [f"{values[t]:.1f}" if t in values else "–" for t in tests]
        if "avg" in columns:  # the published average is over all environments: only comparable to a full row
            cells.append(f"{table[name][-1]:.1f}" if sorted(tests) == sorted(envs) else "–")
        rows.append([f"{name} (DomainBed)", *cells])
    return rows
