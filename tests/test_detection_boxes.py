"""Box utilities against NumPy float64 references and hand-worked cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.detection.boxes import (
    BoxError,
    batched_nms,
    decode_centers,
    encode_centers,
    nms,
    pairwise_iou,
)


def np_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(np.asarray(a, np.float64)):
        for j, q in enumerate(np.asarray(b, np.float64)):
            ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = ih * iw
            union = max(p[2] - p[0], 0) * max(p[3] - p[1], 0) + max(q[2] - q[0], 0) * max(q[3] - q[1], 0) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_nms(boxes, scores, thr, labels=None):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    iou = np_iou(boxes, boxes)
    keep = []
    for i in order:
        if all(iou[i, j] <= thr or (labels is not None and labels[i] != labels[j]) for j in keep):
            keep.append(i)
    return keep


def random_boxes(rng, n):
    yx = rng.uniform(0, 0.7, size=(n, 2))
    hw = rng.uniform(0.05, 0.4, size=(n, 2))
    return np.concatenate([yx, yx + hw], 1).astype(np.float32)


def test_iou_hand_worked():
    a = jnp.array([[0.0, 0.0, 0.5, 0.5]])
    # overlap 0.25 x 0.5 = 0.125; union 0.25 + 0.25 - 0.125 = 0.375 -> 1/3
    b = jnp.array([[0.25, 0.0, 0.75, 0.5], [0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.1, 0.3]])
    np.testing.assert_allclose(pairwise_iou(a, b), [[1 / 3, 1.0, 0.0, 0.0]], atol=1e-6)


def test_iou_matches_numpy_and_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 13), random_boxes(rng, 7)
    got = np.asarray(pairwise_iou(a, b))
    np.testing.assert_allclose(got, np_iou(a, b), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pairwise_iou(b, a)), got.T, atol=1e-6)
    assert (got >= 0).all() and (got <= 1 + 1e-6).all()


def test_iou_rejects_bad_shapes():
    with pytest.raises(BoxError, match=r"\(\.\.\., 4\)"):
        pairwise_iou(jnp.zeros((3, 3)), jnp.zeros((2, 4)))


def test_encode_hand_worked():
    # One box on an 8x8 grid: rows 0.25..0.75 (cells 2..6), cols 0.0..0.25 (cells 0..2):
    # centre (4.0, 1.0) -> cell (4, 1), offset (0, 0); size 4 x 2 cells.
    boxes = jnp.array([[0.25, 0.0, 0.75, 0.25], [0, 0, 0, 0]])
    t = encode_centers(boxes, jnp.array([1, 0]), jnp.array([True, False]), 8, 2)
    assert t.heatmap.shape == (8, 8, 2)
    assert float(t.heatmap[4, 1, 1]) == 1.0 and float(t.heatmap[..., 0].max()) == 0.0
    assert float(t.mask.sum()) == 1.0 and float(t.mask[4, 1]) == 1.0
    np.testing.assert_allclose(t.offset[4, 1], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(t.log_size[4, 1], np.log([4.0, 2.0]), atol=1e-6)
    # Gaussian std = size / 6: one cell down, sigma_y = 4/6 -> exp(-1 / (2 * (2/3)^2)).
    np.testing.assert_allclose(t.heatmap[5, 1, 1], np.exp(-1 / (2 * (4 / 6) ** 2)), rtol=1e-5)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(1)
    boxes = np.array([[0.1, 0.1, 0.4, 0.3], [0.5, 0.55, 0.95, 0.75], [0.2, 0.6, 0.3, 0.9]], np.float32)
    labels = jnp.array([0, 1, 0])
    t = encode_centers(jnp.asarray(boxes), labels, jnp.ones(3, bool), 16, 2)
    logits = jnp.log(t.heatmap + 1e-6) - jnp.log1p(-t.heatmap + 1e-6)  # inverse sigmoid
    det = decode_centers(logits, t.offset, t.log_size, top_k=3)
    order = np.argsort(np.asarray(det.boxes)[:, 0] * 10 + np.asarray(det.boxes)[:, 1])
    np.testing.assert_allclose(np.asarray(det.boxes)[order], boxes[[0, 2, 1]], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(det.labels)[order], [0, 0, 1])
    assert np.all(np.asarray(det.scores) > 0.99)
    del rng


def test_encode_is_jittable_and_vmaps():
    boxes = jnp.array([[[0.1, 0.1, 0.4, 0.3]], [[0.5, 0.5, 0.9, 0.9]]])
    f = jax.jit(jax.vmap(lambda b, l, m: encode_centers(b, l, m, 8, 1)))
    t = f(boxes, jnp.zeros((2, 1), jnp.int32), jnp.ones((2, 1), bool))
    assert t.heatmap.shape == (2, 8, 8, 1) and float(t.mask.sum()) == 2.0


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_numpy(thr):
    rng = np.random.default_rng(int(thr * 10))
    boxes = random_boxes(rng, 30)
    scores = rng.uniform(size=30).astype(np.float32)
    res = jax.jit(lambda b, s: nms(b, s, thr, max_output=30))(boxes, scores)
    kept = [int(i) for i, v in zip(res.indices, res.valid) if v]
    assert kept == np_nms(boxes, scores, thr)
    assert all(int(i) == -1 for i, v in zip(res.indices, res.valid) if not v)


def test_nms_hand_worked_and_padding():
    boxes = jnp.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [0, 0, 0.1, 0.1]], jnp.float32)
    scores = jnp.array([0.5, 0.9, 0.1])
    res = nms(boxes, scores, 0.5, max_output=5)
    # box 1 (0.9) kept; box 0 has IoU 0.9 with it -> suppressed; box 2 IoU 0.011 -> kept
    np.testing.assert_array_equal(res.indices, [1, 2, -1, -1, -1])
    np.testing.assert_array_equal(res.valid, [True, True, False, False, False])
    res = nms(boxes, scores, 0.5, max_output=1, score_threshold=0.95)
    assert not bool(res.valid[0])


def test_batched_nms_matches_numpy_per_class():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 25)
    scores = rng.uniform(size=25).astype(np.float32)
    labels = rng.integers(0, 3, size=25)
    res = batched_nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(labels), 0.3, max_output=25)
    kept = [int(i) for i, v in zip(res.indices, res.valid) if v]
    assert kept == np_nms(boxes, scores, 0.3, labels)
    # identical boxes of different classes both survive
    same = jnp.array([[0, 0, 1, 1], [0, 0, 1, 1]], jnp.float32)
    r = batched_nms(same, jnp.array([0.9, 0.8]), jnp.array([0, 1]), 0.5, 2)
    assert bool(r.valid.all())
