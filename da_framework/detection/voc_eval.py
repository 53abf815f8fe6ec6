"""PASCAL VOC detection evaluation: average precision at IoU 0.5 per class.

Everingham, Van Gool, Williams, Winn & Zisserman, "The PASCAL Visual Object Classes (VOC)
Challenge", IJCV 2010, Sec. 4.2 (and the VOC2007/VOC2012 devkits):

* per class, all detections of the test set are sorted by decreasing score (ties keep
  input order) and matched greedily: a detection is assigned the ground-truth box of
  its image with which it has the highest IoU; if that IoU is >= ``iou_threshold``
  (0.5) it is a true positive when that box was not matched before, a false positive
  when it was (a duplicate); below the threshold it is a false positive;
* a detection whose best-matching box is marked "difficult" is ignored (neither TP nor
  FP), and difficult boxes do not count in the number of positives;
* AP is the area under the precision/recall curve with precision made monotonically
  decreasing ("all-point" interpolation, VOC2010 onwards), or the mean of the
  interpolated precision at recall 0, 0.1, ..., 1 ("11-point", VOC2007, eq. 1-2; the
  thresholds are the float64 ``np.arange(0, 1.1, 0.1)`` of the reference code, so a recall
  of exactly 0.3, 0.6 or 0.7 falls just short of its threshold, as there).

Boxes are continuous ``[ymin, xmin, ymax, xmax]`` coordinates, so IoU has no devkit-style
"+1 pixel" in widths and heights.  Everything here is NumPy float64 on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


VOC07_RECALL_THRESHOLDS: np.ndarray = np.arange(0.0, 1.1, 0.1)
"""The 11 recall levels of the VOC2007 metric, exactly as the reference code builds them."""


class EvalError(ValueError):
    """Raised for malformed detections or ground truth."""


class ImageDetections(NamedTuple):
    """The detections of one image: ``boxes`` (k, 4), ``scores`` (k,), ``labels`` (k,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


class ImageGroundTruth(NamedTuple):
    """The annotations of one image: ``boxes`` (n, 4), ``labels`` (n,), ``difficult`` (n,)."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float64 IoU of boxes ``a`` (n, 4) against ``b`` (m, 4); 0 where the union is 0."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ih = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iw = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ih * iw
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """Area under a precision/recall curve (points in detection order).

    Args:
      recall: cumulative recall after each detection (non-decreasing).
      precision: cumulative precision after each detection.
      use_07_metric: the VOC2007 11-point interpolation (mean over t in {0, 0.1, ..., 1}
        of the maximal precision at recall >= t, 0 when none) instead of the all-point one.
        The thresholds are :data:`VOC07_RECALL_THRESHOLDS`, the float64 values of
        ``np.arange(0, 1.1, 0.1)`` that the reference evaluation code of the VOC2007
        detection baselines (py-faster-rcnn's ``voc_eval``, Detectron2's
        ``PascalVOCDetectionEvaluator``) compares against, with no tolerance: three of them
        (0.3, 0.6, 0.7) round slightly above the decimal value, so a recall of exactly 3/10
        does not reach the threshold "0.3".  Published VOC2007 numbers use this convention,
        so it is kept here for comparability.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if recall.shape != precision.shape:
        raise EvalError(f"recall and precision must have the same shape, got {recall.shape} and {precision.shape}")
    if use_07_metric:
        total = 0.0
        for t in VOC07_RECALL_THRESHOLDS:
            above = precision[recall >= t]
            total += float(above.max()) if above.size else 0.0
        return total / 11.0
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


class ClassMatches(NamedTuple):
    """Greedy matching of one class's detections (sorted by decreasing score).

    Attributes:
      scores: sorted scores of the detections that count (ignored ones removed).
      true_positive: bool per counted detection.
      num_positives: non-difficult ground-truth boxes of the class.
    """

    scores: np.ndarray
    true_positive: np.ndarray
    num_positives: int


def match_class(
    detections: Sequence[ImageDetections],
    ground_truth: Sequence[ImageGroundTruth],
    class_id: int,
    iou_threshold: float = 0.5,
) -> ClassMatches:
    """Greedy VOC matching of class ``class_id`` over a set of images (see module doc)."""
    if len(detections) != len(ground_truth):
        raise EvalError(f"{len(detections)} detection lists for {len(ground_truth)} ground-truth images")
    gts, npos = [], 0
    for g in ground_truth:
        labels = np.asarray(g.labels).reshape(-1)
        boxes = np.asarray(g.boxes, np.float64).reshape(-1, 4)
        difficult = np.asarray(g.difficult, bool).reshape(-1)
        if not len(labels) == len(boxes) == len(difficult):
            raise EvalError(
                f"ground truth has {len(boxes)} boxes, {len(labels)} labels, {len(difficult)} difficult flags"
            )
        sel = labels == class_id
        gts.append((boxes[sel], difficult[sel]))
        npos += int(np.sum(~difficult[sel]))
    image_ids, scores, boxes = [], [], []
    for i, d in enumerate(detections):
        sel = np.asarray(d.labels).reshape(-1) == class_id
        s = np.asarray(d.scores, np.float64).reshape(-1)[sel]
        image_ids += [i] * len(s)
        scores.append(s)
        boxes.append(np.asarray(d.boxes, np.float64).reshape(-1, 4)[sel])
    scores_all = np.concatenate(scores) if scores else np.zeros(0)
    boxes_all = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    order = np.argsort(-scores_all, kind="stable")
    used = [np.zeros(len(b), bool) for b, _ in gts]
    kept_scores, tp = [], []
    for k in order:
        gt_boxes, gt_difficult = gts[image_ids[k]]
        if len(gt_boxes):
            ious = iou_matrix(boxes_all[k : k + 1], gt_boxes)[0]
            j = int(np.argmax(ious))
            if ious[j] >= iou_threshold:
                if gt_difficult[j]:
                    continue  # ignored: neither TP nor FP
                kept_scores.append(scores_all[k])
                tp.append(not used[image_ids[k]][j])
                used[image_ids[k]][j] = True
                continue
        kept_scores.append(scores_all[k])
        tp.append(False)
    return ClassMatches(np.asarray(kept_scores, np.float64), np.asarray(tp, bool), npos)


def class_average_precision(matches: ClassMatches, use_07_metric: bool = False) -> float:
    """AP of one class from its matches; NaN when it has no non-difficult positives."""
    if matches.num_positives == 0:
        return math.nan
    tp = np.cumsum(matches.true_positive)
    fp = np.cumsum(~matches.true_positive)
    recall = tp / matches.num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(recall, precision, use_07_metric)


def evaluate_detections(
    detections: Sequence[ImageDetections],
    ground_truth: Sequence[ImageGroundTruth],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> dict[str, float | list[float]]:
    """VOC AP per class and its mean over classes that have positives.

    Returns:
      ``{"ap": [AP of class 0, ...] (NaN for classes without positives), "map": mean
      over the non-NaN APs (NaN if none)}``.
    """
    aps = [
        class_average_precision(match_class(detections, ground_truth, c, iou_threshold), use_07_metric)
        for c in range(num_classes)
    ]
    finite = [a for a in aps if not math.isnan(a)]
    return {"ap": aps, "map": float(np.mean(finite)) if finite else math.nan}
