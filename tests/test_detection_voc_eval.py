"""VOC AP against hand-worked cases (expected values worked out in the comments)."""

import math

import numpy as np
import pytest

from da_framework.detection.voc_eval import (
    EvalError,
    ImageDetections,
    ImageGroundTruth,
    average_precision,
    evaluate_detections,
    match_class,
)

A = [0.0, 0.0, 0.5, 0.5]
B = [0.5, 0.5, 1.0, 1.0]
FAR = [0.0, 0.8, 0.1, 0.9]  # IoU 0 with A and B


def gt(boxes, labels=None, difficult=None):
    n = len(boxes)
    return ImageGroundTruth(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels if labels is not None else [0] * n),
        np.asarray(difficult if difficult is not None else [False] * n),
    )


def det(boxes, scores, labels=None):
    return ImageDetections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores),
        np.asarray(labels if labels is not None else [0] * len(scores)),
    )


def ap(dets, gts, **kw):
    return evaluate_detections(dets, gts, num_classes=1, **kw)["ap"][0]


def test_duplicate_and_false_positive():
    # Scores 0.9 (on A), 0.8 (far), 0.7 (on A again: duplicate), 0.6 (on B); input order shuffled.
    # TP/FP by score: T F F T; npos 2 -> recall .5 .5 .5 1, precision 1 .5 1/3 .5.
    # All-point: envelope of precision is 1 up to recall .5, then .5 -> .5*1 + .5*.5 = 0.75.
    # 11-point: t in {0,..,.5} (6 values) -> 1; t in {.6,..,1} (5 values) -> .5; (6 + 2.5)/11.
    dets = [det([B, FAR, A, A], [0.6, 0.8, 0.7, 0.9])]
    gts = [gt([A, B])]
    assert ap(dets, gts) == pytest.approx(0.75)
    assert ap(dets, gts, use_07_metric=True) == pytest.approx(8.5 / 11)
    m = match_class(dets, gts, 0)
    np.testing.assert_array_equal(m.true_positive, [True, False, False, True])
    np.testing.assert_allclose(m.scores, [0.9, 0.8, 0.7, 0.6])


def test_difficult_boxes_are_ignored():
    # Image: A (normal), B (difficult).  Detections 0.9 far (FP), 0.8 on B (ignored),
    # 0.7 on A (TP).  Counted: F T with npos = 1 -> recall 0 1, precision 0 .5 -> AP .5.
    # Were B an ordinary box: F T T, npos 2 -> AP = .5 * 2/3 + .5 * 2/3 = 2/3; were the
    # detection on B a false positive: F F T -> AP 1/3.  So only correct handling gives .5.
    dets = [det([FAR, B, A], [0.9, 0.8, 0.7])]
    assert ap(dets, [gt([A, B], difficult=[False, True])]) == pytest.approx(0.5)
    assert ap(dets, [gt([A, B])]) == pytest.approx(2 / 3)
    assert match_class(dets, [gt([A, B], difficult=[False, True])], 0).num_positives == 1


def test_greedy_matching_across_images_and_iou_threshold():
    # Image 0: GT A; image 1: GT B.  Detections: image 1 0.95 on B (TP); image 0 0.5 on a
    # box of IoU 1/3 with A (0.25 x 0.5 overlap over union 0.375: FP at 0.5); image 0 0.3
    # on A (TP).  T F T, npos 2: recall .5 .5 1, precision 1 .5 2/3.
    # All-point: .5 * 1 + .5 * 2/3 = 5/6.  11-point: (6 * 1 + 5 * 2/3) / 11 = 28/33.
    third = [0.25, 0.0, 0.75, 0.5]
    dets = [det([third, A], [0.5, 0.3]), det([B], [0.95])]
    gts = [gt([A]), gt([B])]
    assert ap(dets, gts) == pytest.approx(5 / 6)
    assert ap(dets, gts, use_07_metric=True) == pytest.approx(28 / 33)
    # At threshold 0.33 the IoU-1/3 detection takes A (TP) and the later one on A is a
    # duplicate (FP): T T F, npos 2 -> recall .5 1 1, precision 1 1 2/3 -> AP 1.
    assert ap(dets, gts, iou_threshold=0.33) == pytest.approx(1.0)


def test_classes_are_separate_and_nan_without_positives():
    dets = [det([A, B], [0.9, 0.9], labels=[0, 1])]
    out = evaluate_detections(dets, [gt([A], labels=[0])], num_classes=3)
    assert out["ap"][0] == pytest.approx(1.0)
    assert math.isnan(out["ap"][1]) and math.isnan(out["ap"][2])
    assert out["map"] == pytest.approx(1.0)
    # a missed object: recall caps at .5 -> AP .5
    assert ap([det([A], [0.9])], [gt([A, B])]) == pytest.approx(0.5)
    # no detections at all -> 0
    assert ap([det(np.zeros((0, 4)), [])], [gt([A])]) == 0.0


def test_average_precision_curves():
    # Perfect ranking: AP 1 under both metrics.
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0]), True) == pytest.approx(1.0)
    # Recall reaching only .3 with precision 1: all-point .3; 11-point: the devkit's threshold
    # "0.3" is np.arange(0, 1.1, 0.1)[3] = 0.30000000000000004 > 0.3, so only t in {0,.1,.2}
    # count -> 3/11 (see tests/test_numerics_audit.py for the hand case through detections).
    assert average_precision(np.array([0.3]), np.array([1.0])) == pytest.approx(0.3)
    assert average_precision(np.array([0.3]), np.array([1.0]), True) == pytest.approx(3 / 11)


def test_bad_input():
    with pytest.raises(EvalError, match="detection lists"):
        evaluate_detections([], [gt([A])], 1)
    with pytest.raises(EvalError, match="difficult"):
        evaluate_detections([det([A], [1.0])], [ImageGroundTruth(np.zeros((1, 4)), np.zeros(1), np.zeros(2, bool))], 1)
