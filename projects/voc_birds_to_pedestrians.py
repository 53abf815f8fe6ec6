"""PASCAL VOC birds -> pedestrians: transfer a bird detector to persons, k-shot.

Three ways of training the person detector on k labelled person images, k in
{10, 50, all}, with the same number of steps:

* ``scratch``: from a random initialisation;
* ``finetune``: from the bird detector (whole network, heads included);
* ``finetune+align``: as ``finetune`` plus ``ALIGN_WEIGHT`` x MK-MMD^2 (DAN, Long et al.,
  ICML 2015) between the pooled backbone features of bird images and of (unlabelled)
  person images from the whole person train split.

The detector is the compact centre-point detector of :mod:`da_framework.detection.model`
(ResNet-8 feature map of width 8, stride 4) and the metric the VOC AP@0.5 of the person
class (all-point; the VOC2007 11-point AP is recorded too) on the person test split.

Data: VOC 2007 (tfds ``voc/2007``, prepared as array_record in the data dir) when it is
prepared, else -- or when ``DA_DETECTION_SET=synthetic`` -- the synthetic pair of
:mod:`da_framework.detection.synthetic` (``DA_DETECTION_SET=voc`` insists on VOC and fails
with the preparation command when it is missing).  The run prints which one it uses.

Literature: there is no standard number for this exact protocol (one bird -> person
transfer at k shots with a CPU-sized detector); for orientation only, full-data
detectors with ImageNet backbones reach person AP@0.5 around 0.7-0.8 on VOC 2007 test
(e.g. Faster R-CNN, Ren et al., NeurIPS 2015), far beyond what this 64-pixel CPU detector
can be expected to reach.  We do not quote a per-class table number.

Run: da run voc_birds_to_pedestrians --seeds 3        (``--steps N`` sets fine-tune steps)
Measured numbers and the exact command: docs/detection.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

PRETRAIN_STEPS = 150
FINETUNE_STEPS = 100
BATCH_SIZE = 16
LEARNING_RATE = 2e-3
ALIGN_WEIGHT = 1.0
SHOTS = (10, 50, None)  # None: every labelled target training image
DETECTOR = {"backbone": "resnet8", "width": 8, "head_channels": 32}
SYNTHETIC = {"num_train": 500, "num_eval": 100}


def get_config() -> dict:
    """Nominal pairing (for ``da list``); the procedure is :func:`run`."""
    return {"source": "synthetic_det/bird", "target": "synthetic_det/pedestrian"}


def load_pair(data_dir: str | None = None) -> tuple[str, object, object]:
    """``(dataset name, source domain, target domain)`` as chosen by ``DA_DETECTION_SET``."""
    from da_framework.data.catalog import DatasetNotPreparedError
    from da_framework.detection.synthetic import synthetic_detection_domain

    choice = os.environ.get("DA_DETECTION_SET", "auto")
    if choice not in ("auto", "voc", "synthetic"):
        raise ValueError(f"DA_DETECTION_SET must be 'auto', 'voc' or 'synthetic', got {choice!r}")
    if choice != "synthetic":
        from da_framework.detection.voc import voc_detection_domain

        try:
            bird = voc_detection_domain("bird", data_dir=data_dir)
            return "voc/2007", bird, voc_detection_domain("person", data_dir=data_dir)
        except DatasetNotPreparedError:
            if choice == "voc":
                raise
    return (
        "synthetic",
        synthetic_detection_domain("bird", **SYNTHETIC),
        synthetic_detection_domain("pedestrian", **SYNTHETIC),
    )


def run(results_dir: Path, seeds: list[int], steps: int | None) -> list[dict]:
    """Trains and evaluates every (seed, k, method); returns mean/std rows per (k, method).

    Per-seed rows go to ``<results_dir>/voc_birds_to_pedestrians.json``.
    """
    from da_framework.detection.model import make_detector
    from da_framework.detection.synthetic import k_shot
    from da_framework.detection.train import evaluate_ap, fit

    finetune_steps = steps or FINETUNE_STEPS
    pretrain_steps = PRETRAIN_STEPS if steps is None else max(int(1.5 * steps), 1)
    name, source, target = load_pair()
    print(f"voc_birds_to_pedestrians: dataset = {name} (set DA_DETECTION_SET=synthetic|voc to choose)", flush=True)
    model = make_detector(**DETECTOR)
    src_train, tgt_train, tgt_test = source.splits["train"], target.splits["train"], target.splits["test"]
    common = {"batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE}
    rows = []
    for seed in seeds:
        t0 = time.time()
        bird = fit(model, src_train, steps=pretrain_steps, seed=seed, **common)
        bird_ap = evaluate_ap(model, bird, source.splits["test"])["ap50"]
        print(f"seed {seed}: bird detector AP50 on bird test {bird_ap:.3f} ({time.time() - t0:.0f}s)", flush=True)
        for k in SHOTS:
            train = k_shot(tgt_train, k, seed)
            runs = {
                "scratch": {},
                "finetune": {"init_params": bird},
                "finetune+align": {
                    "init_params": bird,
                    "align_weight": ALIGN_WEIGHT,
                    "align_source": src_train,
                    "align_target": tgt_train,
                },
            }
            for method, kwargs in runs.items():
                params = fit(model, train, steps=finetune_steps, seed=seed, **common, **kwargs)
                ap = evaluate_ap(model, params, tgt_test)
                row = {"dataset": name, "k": "all" if k is None else k, "method": method, "seed": seed, **ap}
                print(json.dumps(row), flush=True)
                rows.append(row)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "voc_birds_to_pedestrians.json").write_text(json.dumps(rows, indent=1))
    return summarise(rows)


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of AP50 per (dataset, k, method)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], str(r["k"]), r["method"]), []).append(r)
    table = []
    for (dataset, k, method), rs in groups.items():
        aps, aps07 = [r["ap50"] for r in rs], [r["ap50_voc07"] for r in rs]
        std = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        table.append({
            "dataset": dataset, "k": k, "method": method, "seeds": len(rs),
            "AP50": f"{statistics.mean(aps):.3f} ± {std(aps):.3f}",
            "AP50 (VOC07 11-pt)": f"{statistics.mean(aps07):.3f} ± {std(aps07):.3f}",
        })  # fmt: skip
    return table
