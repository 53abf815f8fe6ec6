"""DomainBed's published MNIST numbers (bench/domainbed_anchors.py) and their rows in the DG tables."""

import re
from pathlib import Path

import numpy as np
import pytest

from da_framework.bench.dg_selection import dg_tables
from da_framework.bench.domainbed import ALGORITHMS
from da_framework.bench.domainbed_anchors import ENVIRONMENTS, PUBLISHED, anchor_rows, domainbed_name

DOCS = Path(__file__).resolve().parents[1] / "docs" / "domain_generalisation.md"


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_every_row_has_its_environments_and_an_average_that_matches_them(key):
    family, _ = key
    for name, row in PUBLISHED[key].items():
        assert name in ALGORITHMS, name
        assert len(row) == len(ENVIRONMENTS[family]) + 1, name
        # DomainBed averages unrounded means, then rounds: at most 0.05 + 0.05 from the rounded cells' mean
        assert abs(np.mean(row[:-1]) - row[-1]) <= 0.1 + 1e-9, (key, name, row)


def test_the_averages_equal_the_anchor_table_in_the_docs():
    # an independent transcription of the same file (docs/domain_generalisation.md, "DomainBed's anchors")
    lines = [ln for ln in DOCS.read_text().splitlines() if re.match(r"\| \w+ \| \d+\.\d \| \d+\.\d \| \d+\.\d \| \d+\.\d \|$", ln)]
    docs = {c[0]: [float(x) for x in c[1:]] for c in (ln.strip("|").replace(" ", "").split("|") for ln in lines)}
    assert len(docs) == 10
    for name, (cm_tv, cm_or, rm_tv, rm_or) in docs.items():
        assert PUBLISHED[("cmnist", "training_domain")][name][-1] == cm_tv
        assert PUBLISHED[("cmnist", "oracle")][name][-1] == cm_or
        assert PUBLISHED[("rmnist", "training_domain")][name][-1] == rm_tv
        assert PUBLISHED[("rmnist", "oracle")][name][-1] == rm_or


def test_anchor_rows_by_hand():
    assert domainbed_name("cross_entropy + irm") == "IRM" and domainbed_name("cross_entropy + dann") is None
    rows = anchor_rows(["cross_entropy", "cross_entropy + irm", "cross_entropy + dann"],
                       ["cmnist/+90%", "cmnist/-90%", "avg"], "oracle")
    assert rows == [["ERM (DomainBed)", "71.8", "28.7", "–"], ["IRM (DomainBed)", "72.0", "58.5", "–"]]
    full = anchor_rows(["group_dro"], ["cmnist/+90%", "cmnist/+80%", "cmnist/-90%", "avg"], "training_domain")
    assert full == [["GroupDRO (DomainBed)", "73.1", "73.2", "10.0", "52.1"]]
    assert anchor_rows(["cross_entropy"], ["rdigits/0", "avg"], "oracle") == []  # no published numbers
    assert anchor_rows(["cross_entropy"], ["A", "B", "avg"], "oracle") == []


def _record(target, method, evals):
    source = ",".join(e for e in ENVIRONMENTS["cmnist"] if e != target)
    return {"config": {"source": ",".join(f"cmnist/{e}" for e in source.split(",")), "target": f"cmnist/{target}",
                       "method": method}, "seed": 0, "hparams": {},
            "history": [{"step": s, "source_val_accuracy": sv, "target_test_accuracy": tt, "target_val_accuracy": tv}
                        for s, sv, tt, tv in evals]}


def test_the_rule_tables_print_the_published_rows_under_ours_never_bold():
    records = [_record("+90%", "cross_entropy", [(100, 0.7, 0.69, 0.68)]),
               _record("-90%", "cross_entropy", [(100, 0.8, 0.12, 0.11)])]
    tables = {t.title.split(": ")[1]: t for t in dg_tables(records)}
    oracle = tables["oracle"]
    assert oracle.header == ["method", "cmnist/+90%", "cmnist/-90%", "avg"]
    assert oracle.rows[0][:3] == ["cross_entropy", "69.0", "12.0"]
    assert oracle.rows[1] == ["ERM (DomainBed)", "71.8", "28.7", "–"]
    assert not any(oracle.bold[1]) and "results.tex" in oracle.note
    assert tables["training_domain"].rows[1] == ["ERM (DomainBed)", "71.7", "10.0", "–"]
