"""The real MNIST <-> USPS table: our records beside tllib's published numbers, three selection rules.

Reads every ``da run`` record under ``--results-dir`` (default
``benchmarks/results/real_digits_short``) and prints, per (experiment, method), the target test
accuracy of the last step, of the evaluation step with the best source validation accuracy
(label-free), and of the step with the best target test accuracy ("oracle": tllib's rule,
which reads target labels), mean +- std over the seeds found, beside tllib's number; then, for
runs made with ``--set eval_validators=True``, the accuracy of the step each label-free
validator (IWCV, DEV, target entropy, SND) picks.

Run:  python benchmarks/real_digits_table.py [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

# tllib docs/dalib/benchmarks/image_classification.rst at commit 40df20b (one seed, oracle
# selection), as quoted in issue 15; LeNet, full protocol (50,000 steps of batch 128).
TLLIB = {
    "source_only": (82.1, 74.6), "dann": (91.7, 95.2), "dan": (86.0, 89.5), "jan": (84.0, 86.8),
    "adda": (94.5, 98.3), "cdan": (96.0, 97.7), "mcd": (94.1, 97.6), "afn": (88.6, 97.2),
    "bsp": (95.7, 97.8), "mdd": (94.8, 97.8), "mcc": (95.1, 94.6),
}  # fmt: skip
# Not in tllib's digits table: SHOT (source-free), tim-learn/SHOT results.md (3 seeds, LeNet, 30 source +
# 30 target epochs, batch 64; as quoted in issue 15), by the preset names of da_framework/train/method.py.
TLLIB.update({"shot": (97.9, 98.0), "shot_im_source_free": (97.7, 97.6)})
PAIR_COLUMN = {"mnist": 0, "usps": 1}  # by source domain: M->U is column 0, U->M column 1


def picks(record: dict) -> tuple[float, float, float]:
    """(last, best-source-val, oracle) target test accuracy of one record, in %."""
    evals = [h for h in record["history"] if "target_test_accuracy" in h]
    last = record["metrics"]["target_test_accuracy"]
    by_val = max(evals, key=lambda h: (h["source_val_accuracy"], h["step"]))["target_test_accuracy"]
    oracle = max(h["target_test_accuracy"] for h in evals)
    return 100 * last, 100 * by_val, 100 * oracle


# The label-free validators a run scores at every evaluation with config eval_validators=True
# (da_framework/bench/selection.py): name -> True when higher is better.
VALIDATORS = {"iwcv_risk": False, "dev_risk": False, "target_entropy": False, "snd": True}


def validator_picks(record: dict) -> dict[str, float] | None:
    """Target test accuracy (%) of the evaluation step each label-free validator picks, or None
    when the record's evaluations carry no ``validator/*`` scores."""
    evals = [h for h in record["history"] if "target_test_accuracy" in h and "validator/snd" in h]
    if not evals:
        return None
    out = {}
    for name, higher in VALIDATORS.items():
        best = max(evals, key=lambda h: ((1 if higher else -1) * h[f"validator/{name}"], h["step"]))
        out[name] = 100 * best["target_test_accuracy"]
    return out


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


SETTING_KEYS = ("learning_rate", "momentum", "lr_schedule", "weight_decay", "bottleneck_norm", "bottleneck_dim", "batch_size", "steps",
                "source_augment")


def settings(config: dict) -> str:
    """The config values of a record that differ from its experiment file's (``--set`` overrides), as ``k=v, ...``."""
    from da_framework.experiment_files import load_experiment
    from da_framework.results import LATER_KEYS

    base = load_experiment(config["name"])
    # a key newer than the record reads as the value that reproduces the record's behaviour
    values = {k: config.get(k, LATER_KEYS.get(k)) for k in SETTING_KEYS if k in config or k in LATER_KEYS}
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) and not v else f"{k}={v}"
                     for k, v in values.items() if v != getattr(base, k))


def anchor_method(method: str) -> str | None:
    """The tllib row a method spec is compared with: a preset name itself, else its last adaptation term in :data:`TLLIB`."""
    from da_framework.train.method import parse_method

    if method in TLLIB:
        return method
    losses = [t.loss for t in parse_method(method).terms if t.loss != "entropy"]
    named = [name for name in losses if name in TLLIB]
    return named[-1] if named else "source_only" if losses == ["cross_entropy"] else None


def table(results_dir: Path) -> str:
    """The markdown table of every record under ``results_dir``: one row per (pair, method, settings)."""
    groups: dict[tuple[str, str, str, str], list[tuple[float, float, float]]] = defaultdict(list)
    diverged: list[str] = []
    for path in sorted(results_dir.rglob("seed*.json")):
        record = json.loads(path.read_text())
        c = record["config"]
        if record["format"].startswith("da_framework.diverged"):  # no metrics: listed under the table
            diverged.append(f"{c['source']} -> {c['target']} {c['method']} ({settings(c) or 'protocol settings'}, "
                            f"lr {c['learning_rate']}): {record.get('error', 'no metrics')}")
            continue
        groups[(c["source"], c["target"], c["method"], settings(c))].append(picks(record))
    rows = ["| pair | method | settings | seeds | last | best source-val | oracle (target test) | published (tllib; SHOT's results.md for shot*) |",
            "|---|---|---|---|---|---|---|---|"]
    for (src, tgt, method, extra), values in sorted(groups.items()):
        cols = list(zip(*values))
        name = anchor_method(method)
        anchor = TLLIB[name][PAIR_COLUMN.get(src, 0)] if name else None
        rows.append(f"| {src} -> {tgt} | {method} | {extra or '-'} | {len(values)} | " + " | ".join(_cell(list(v)) for v in cols)
                    + f" | {f'{anchor} ({name})' if anchor is not None else '-'} |")
    rows += [f"\nDiverged (no metrics): {d}" for d in diverged]
    return "\n".join(rows + validator_table(results_dir))


def validator_table(results_dir: Path) -> list[str]:
    """Rows of a second table: the target accuracy of the checkpoint each label-free validator picks."""
    groups: dict[tuple[str, str, str, str], list[dict[str, float]]] = defaultdict(list)
    for path in sorted(results_dir.rglob("seed*.json")):
        record = json.loads(path.read_text())
        if record["format"].startswith("da_framework.run") and (picked := validator_picks(record)) is not None:
            c = record["config"]
            groups[(c["source"], c["target"], c["method"], settings(c))].append(picked)
    if not groups:
        return []
    rows = ["", "Checkpoint picked by each label-free validator (runs with eval_validators=True):", "",
            "| pair | method | settings | seeds | " + " | ".join(VALIDATORS) + " |", "|---|---|---|---|" + "---|" * len(VALIDATORS)]
    for (src, tgt, method, extra), picked in sorted(groups.items()):
        rows.append(f"| {src} -> {tgt} | {method} | {extra or '-'} | {len(picked)} | "
                    + " | ".join(_cell([p[name] for p in picked]) for name in VALIDATORS) + " |")
    return rows


def main() -> None:
    """Prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results" / "real_digits_short")
    print(table(ap.parse_args().results_dir))


if __name__ == "__main__":
    main()
