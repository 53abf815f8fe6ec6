"""Training alarms: a run whose losses stayed finite but whose classifier blew up or ended worse than chance.

The finite-check (:mod:`da_framework.train.finite`) stops a run on NaN/inf.  A run can also
go wrong with every loss finite: on real MNIST -> USPS the AFN preset's source
cross-entropy jumped from 2.1 to 34 at step 100 and ended at 26, and the run reported a
target accuracy of 11.1% as if it were a result.  An alarm names such a run, from the
logged history alone, so it also applies to records written before alarms existed.

Three rules, the first two on the labelled cross-entropy the run logs (``loss/cross_entropy``;
a run that does not log it raises none of them), with K the number of classes:

* **blow-up**: some logged value exceeds ``spike_factor * log K`` (default 3, so 6.9 for
  ten classes): three times the loss of a uniform guess.  A freshly initialised classifier
  starts near ``log K``; healthy runs stay below it afterwards.
* **at chance or worse at the end**: the last logged value exceeds ``chance_fraction *
  log K`` (default 0.95), so the classifier fits its own labelled training batches no
  better than predicting 1/K for every class (a collapsed run sits at ``log K``);
* **one class**: the final target test accuracy is at least 0.99 for one class and at most
  0.01 for every other, so (nearly) every target example gets the same prediction.  This one
  also catches runs whose *labelled* loss stays low while the target side collapses (ADDA's
  target encoder on real USPS -> MNIST at lr 0.1; entropy minimisation and FixMatch on the
  embedded ``digits/scale``).  It reads target labels only to describe the run; no model
  selection uses it.

Thresholds were checked against the 386 committed records with per-class target accuracies
(``benchmarks/results/``): 17 raise an alarm (4 blow-ups, 6 at chance or worse, 13 one-class),
all with target accuracy at most 21%: the AFN preset on real MNIST -> USPS, ADDA on real USPS
-> MNIST, MDD and MCD runs of the margin / weight sweeps, and entropy minimisation (2 seeds)
and FixMatch (3 seeds) on ``digits/scale`` in the embedded-default sweep.  Among the others,
the largest logged cross-entropy is 2.63 and the largest last value 0.61 log K (ten classes,
``log 10`` = 2.30).
An alarm does not change a result: the run is recorded as trained,
with its alarms in the record (``alarms``), printed by ``da run`` / ``da bench`` and
listed by ``da report``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CROSS_ENTROPY_KEY = "loss/cross_entropy"


def training_alarms(
    history: Sequence[Mapping[str, Any]],
    num_classes: int,
    spike_factor: float = 3.0,
    chance_fraction: float = 0.95,
    per_class_accuracy: Sequence[float] | None = None,
) -> list[str]:
    """One-line alarms for a finished run's logged history (module doc); empty for a healthy run.

    Args:
      history: the run's history entries (``{"step": s, "loss/cross_entropy": v, ...}``).
      num_classes: K, the number of classes (>= 2).
      spike_factor: the blow-up threshold in units of ``log K``.
      chance_fraction: the end-of-run threshold in units of ``log K``.
      per_class_accuracy: the final target test accuracy of each class, for the one-class rule
        (None: not checked).

    Returns:
      the alarms, each naming the step and the value.
    """
    if num_classes < 2:
        return []
    alarms = []
    if per_class_accuracy is not None and len(per_class_accuracy) >= 2:
        top = max(range(len(per_class_accuracy)), key=lambda c: per_class_accuracy[c])
        others = [a for c, a in enumerate(per_class_accuracy) if c != top]
        if per_class_accuracy[top] >= 0.99 and max(others) <= 0.01:
            alarms.append(
                f"one class: the final model predicts class {top} for (nearly) every target test example "
                f"(its accuracy {per_class_accuracy[top]:.3f}, every other class's at most {max(others):.3f}); "
                "the features or the classifier collapsed (or the run is too short to learn)"
            )
    chance = math.log(num_classes)
    logged = [(int(h["step"]), float(h[CROSS_ENTROPY_KEY])) for h in history if CROSS_ENTROPY_KEY in h]
    logged = [(s, v) for s, v in logged if math.isfinite(v)]
    if not logged:
        return alarms
    step, worst = max(logged, key=lambda sv: sv[1])
    if worst > spike_factor * chance:
        alarms.append(
            f"blow-up: labelled cross-entropy {worst:.3g} at step {step}, over {spike_factor:g} x log({num_classes}) "
            f"= {spike_factor * chance:.3g}; lower the learning rate or the adaptation weights, or set grad_clip"
        )
    last_step, last = logged[-1]
    if last > chance_fraction * chance:
        alarms.append(
            f"at chance or worse: labelled cross-entropy {last:.3g} at the last logged step {last_step}, over "
            f"{chance_fraction:g} x log({num_classes}) = {chance_fraction * chance:.3g} (a uniform guess: {chance:.3g}); "
            "the classifier did not fit its training data (the run collapsed, or is too short to learn)"
        )
    return alarms


def record_alarms(record: Mapping[str, Any]) -> list[str]:
    """The alarms of a run record: those stored in it (``alarms``) and those its history and
    metrics raise under the current rules, without repeats.

    K comes from the record's per-class target accuracy; a record without one (a diverged
    or federated record) has only its stored alarms.
    """
    alarms = list(record.get("alarms", []))
    per_class = (record.get("metrics") or {}).get("target_test_per_class_accuracy")
    if isinstance(per_class, list):
        derived = training_alarms(record.get("history") or [], len(per_class), per_class_accuracy=per_class)
        alarms += [a for a in derived if a not in alarms]
    return alarms


def alarms_markdown(records: Sequence[Mapping[str, Any]], label: Any = None) -> list[str]:
    """A Markdown section listing the runs with alarms (empty when there are none).

    Args:
      records: run records (:func:`record_alarms` is read from each).
      label: ``label(record) -> str`` naming a run's row (default: its method and seed).
    """
    flagged = [(r, a) for r in records if (a := record_alarms(r))]
    if not flagged:
        return []
    name = label or (lambda r: f"{r['config']['method']} seed {r['config'].get('seed')}")
    lines = ["", "### Runs with training alarms", "",
             (f"{len(flagged)} run(s) finished with finite losses but tripped a training alarm (a blow-up, chance or worse, or one class) "
              "(`da_framework.train.alarms`); their numbers are in the tables above."), "",
             "| run | target acc | alarm |", "|---|---|---|"]
    for r, alarms in flagged:
        acc = r.get("metrics", {}).get("target_test_accuracy")
        lines += [f"| {name(r)} | {'' if acc is None else f'{acc:.3f}'} | {a.split(';')[0]} |" for a in alarms]
    return lines + [""]
