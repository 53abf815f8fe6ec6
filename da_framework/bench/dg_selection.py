"""DomainBed's three model-selection rules, over the records of a domain-generalisation sweep.

Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021, Sec. 3 and
``domainbed/model_selection.py`` (facebookresearch/DomainBed).  A DG sweep trains, for every
algorithm, hyper-parameter point, trial seed and test environment ``t``, one *main* run on
every other environment; each run's history holds an evaluation every ``eval_every`` steps.
A rule scores every (run, step) with a validation accuracy, keeps the best step of each run
and the best run among the hyper-parameter points, and reports that run's test-environment
accuracy at that step:

* ``training_domain`` (DomainBed's ``IIDAccuracySelectionMethod``): validation = the mean
  accuracy over the training environments' 20% out-splits (the run's
  ``source_val_accuracy``); the best step of each run, then the best run.
* ``leave_one_out`` (``LeaveOneOutSelectionMethod``): needs, for every other environment
  ``v``, a run trained without both ``t`` and ``v`` (target ``"t,v"``: see
  :func:`da_framework.bench.domainbed.domainbed_pairs`); validation at a step = the mean over
  ``v`` of that run's accuracy on ``v``'s in-split at the same step.  A main run lacking any
  of its leave-one-out runs is not scored (DomainBed returns None there too).
* ``oracle`` (``OracleSelectionMethod``, test-domain validation): the *last* step of each run
  (no early stopping); validation = the test environment's out-split accuracy
  (``target_val_accuracy``: configs with ``eval_target_val=True``).  It reads test-domain
  labels: an upper bound, not a DG method.

The test number is always the test environment's in-split accuracy (``target_test_accuracy``
of the main run).  Ties go to the earlier step and the first hyper-parameter point.
DomainBed prints mean +- ``np.std / sqrt(n)`` over trials; the tables here print mean +- the
sample standard deviation (:func:`da_framework.bench.report.mean_std`) and say so.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from da_framework.bench.domainbed_anchors import SOURCE, anchor_rows
from da_framework.bench.report import TableData, method_name, summary_table
from da_framework.errors import UserError

RULES: dict[str, str] = {
    "training_domain": "training-domain validation (mean out-split accuracy of the training environments; best step)",
    "leave_one_out": "leave-one-domain-out validation (accuracy on the left-out training environment; best step)",
    "oracle": "test-domain validation (ORACLE: the test environment's out-split, last step)",
}


class Pick(NamedTuple):
    """One rule's choice for one run: the validation score, the test accuracy and the step."""

    val: float
    test: float
    step: int


def evaluations(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The history entries with an evaluation, one per step (the last entry of a step wins), by step."""
    by_step = {int(h["step"]): h for h in record.get("history", []) if "target_test_accuracy" in h}
    return [by_step[s] for s in sorted(by_step)]


def _envs(names: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in names.split(",") if n.strip())


def _hp_key(record: Mapping[str, Any]) -> str:
    return json.dumps(record.get("hparams", {}), sort_keys=True)


class DGRuns(NamedTuple):
    """A DG sweep's records, indexed.

    Attributes:
      main: ``(method, seed, test_env) -> {hparams key: record}`` for runs with one target.
      lodo: ``(method, seed, hparams key, frozenset({t, v})) -> record`` for runs with two targets.
      environments: every environment named by any run, in first-seen order.
    """

    main: dict[tuple[str, int, str], dict[str, dict[str, Any]]]
    lodo: dict[tuple[str, int, str, frozenset[str]], dict[str, Any]]
    environments: tuple[str, ...]


def index_runs(records: Sequence[Mapping[str, Any]]) -> DGRuns:
    """Sorts records into main runs (one target) and leave-one-out runs (two targets).

    Raises:
      UserError: for a record with more than two targets, or two main runs of the same
        (method, seed, test environment, hyper-parameters).
    """
    main: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    lodo: dict[tuple[str, int, str, frozenset[str]], dict[str, Any]] = {}
    envs: dict[str, None] = {}
    for r in records:
        targets, sources = _envs(r["config"]["target"]), _envs(r["config"]["source"])
        envs.update(dict.fromkeys(sources + targets))
        m, seed, hp = method_name(r), int(r["seed"]), _hp_key(r)
        if len(targets) == 1:
            slot = main[(m, seed, targets[0])]
            if hp in slot:
                raise UserError(f"two main runs of {m!r} seed {seed} test env {targets[0]!r} at hparams {hp}; keep one")
            slot[hp] = dict(r)
        elif len(targets) == 2:
            lodo[(m, seed, hp, frozenset(targets))] = dict(r)
        else:
            raise UserError(f"record of {m!r} has {len(targets)} targets ({r['config']['target']}); a DG sweep's runs hold out one or two")
    return DGRuns(dict(main), lodo, tuple(envs))


def training_domain_pick(record: Mapping[str, Any]) -> Pick | None:
    """The step with the best mean training-environment out-split accuracy."""
    evals = [h for h in evaluations(record) if "source_val_accuracy" in h]
    if not evals:
        return None
    best = max(evals, key=lambda h: (h["source_val_accuracy"], -h["step"]))
    return Pick(float(best["source_val_accuracy"]), float(best["target_test_accuracy"]), int(best["step"]))


def oracle_pick(record: Mapping[str, Any]) -> Pick | None:
    """The last step, scored by the test environment's out-split accuracy (None without it)."""
    evals = evaluations(record)
    if not evals or "target_val_accuracy" not in evals[-1]:
        return None
    last = evals[-1]
    return Pick(float(last["target_val_accuracy"]), float(last["target_test_accuracy"]), int(last["step"]))


def leave_one_out_pick(record: Mapping[str, Any], runs: DGRuns, environments: Sequence[str]) -> Pick | None:
    """The step with the best mean accuracy on the left-out training environment (None if a run is missing)."""
    test_env = _envs(record["config"]["target"])[0]
    m, seed, hp = method_name(record), int(record["seed"]), _hp_key(record)
    per_val = []
    for v in environments:
        if v == test_env:
            continue
        other = runs.lodo.get((m, seed, hp, frozenset((test_env, v))))
        if other is None:
            return None
        per_val.append({int(h["step"]): float(h[f"target_test_accuracy/{v}"]) for h in evaluations(other)})
    scored = []
    for h in evaluations(record):
        step = int(h["step"])
        if all(step in acc for acc in per_val):
            scored.append(Pick(float(np.mean([acc[step] for acc in per_val])), float(h["target_test_accuracy"]), step))
    return max(scored, key=lambda p: (p.val, -p.step)) if scored else None


def select(runs: DGRuns, rule: str) -> dict[tuple[str, int, str], Pick]:
    """``(method, seed, test_env) -> Pick`` of the hyper-parameter point ``rule`` selects.

    A (method, seed, test_env) none of whose runs the rule can score is left out.
    """
    if rule not in RULES:
        raise UserError(f"unknown DG selection rule {rule!r}; valid: {', '.join(RULES)}")
    out = {}
    for key, by_hp in runs.main.items():
        picks = []
        for record in by_hp.values():  # insertion order: the sweep's order of grid points
            if rule == "training_domain":
                p = training_domain_pick(record)
            elif rule == "oracle":
                p = oracle_pick(record)
            else:
                p = leave_one_out_pick(record, runs, runs.environments)
            if p is not None:
                picks.append(p)
        if picks:
            out[key] = max(picks, key=lambda p: p.val)  # max keeps the first of equal scores
    return out


def rule_table(records: Sequence[Mapping[str, Any]], rule: str) -> TableData | None:
    """Test-environment accuracy (%) per algorithm x test environment (+ avg) under ``rule``.

    Returns None when the rule scores no run (e.g. no leave-one-out runs in the sweep).
    """
    runs = index_runs(records)
    picks = select(runs, rule)
    if not picks:
        return None
    methods = list(dict.fromkeys(k[0] for k in runs.main))
    tests = list(dict.fromkeys(k[2] for k in runs.main))  # in the sweep's order of test environments
    cells: dict[str, dict[str, list[float]]] = {}
    for m in methods:
        per: dict[str, dict[int, float]] = defaultdict(dict)
        for (mm, seed, t), p in picks.items():
            if mm == m:
                per[t][seed] = p.test
        row = {t: [per[t][s] for s in sorted(per[t])] for t in tests if t in per}
        common = set.intersection(*(set(per[t]) for t in tests)) if all(t in per for t in tests) else set()
        if common:
            row["avg"] = [float(np.mean([per[t][s] for t in tests])) for s in sorted(common)]
        cells[m] = row
    seeds = sorted({k[1] for k in picks})
    n_hp = max(len(v) for v in runs.main.values())
    note = (f"Selection: {RULES[rule]}, among {n_hp} hyper-parameter point(s) per algorithm, test environment "
            f"and trial. Test-environment in-split accuracy in %, mean ± sample std over {len(seeds)} trial seed(s) "
            "(DomainBed prints ± its std / sqrt(n)); avg = mean over test environments per seed, "
            "shown when every test environment has that seed.")
    table = summary_table(f"DomainBed selection: {rule}", cells, [*tests, "avg"], note=note)
    anchors = anchor_rows(methods, [*tests, "avg"], rule)
    if anchors:  # the published numbers beside ours, never bold
        table = dataclasses.replace(
            table, rows=[*table.rows, *anchors], bold=[*table.bold, *([False] * len(r) for r in anchors)],
            note=table.note + f" Rows '(DomainBed)': the published numbers ({SOURCE}); the runs above may have "
            "fewer steps, samples or trials (their configs say).")
    return table


def dg_tables(records: Sequence[Mapping[str, Any]]) -> list[TableData]:
    """The tables of every rule that can score the records, in :data:`RULES` order."""
    return [t for t in (rule_table(records, rule) for rule in RULES) if t is not None]
