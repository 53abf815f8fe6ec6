"""The synthetic detection pair: determinism, box tightness, category shapes, k-shot."""

import numpy as np
import pytest

from da_framework.data.domain import DomainError
from da_framework.detection.synthetic import MAX_BOXES, k_shot, render_image, render_split


def test_deterministic_and_seed_dependent():
    a, b, c = render_split("bird", 5, seed=3), render_split("bird", 5, seed=3), render_split("bird", 5, seed=4)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
    assert not np.array_equal(a.arrays["image"], c.arrays["image"])


def test_records_and_box_shapes():
    birds, peds = render_split("bird", 40, seed=0), render_split("pedestrian", 40, seed=1)
    for src in (birds, peds):
        a = src.arrays
        assert a["image"].shape == (40, 64, 64, 3) and a["image"].dtype == np.float32
        assert a["boxes"].shape == (40, MAX_BOXES, 4)
        counts = a["box_mask"].sum(1)
        assert counts.min() >= 1 and counts.max() <= 3
        b = a["boxes"][a["box_mask"]]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and (b >= 0).all() and (b <= 1).all()
        assert not a["is_difficult"].any() and (a["label"] == 1).all()

    def aspect(src):
        b = src.arrays["boxes"][src.arrays["box_mask"]]
        return (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1])  # height / width

    assert np.median(aspect(birds)) < 0.9 < 1.8 < np.median(aspect(peds))


def test_boxes_are_tight_around_the_outline():
    rng = np.random.default_rng(7)
    image, boxes = render_image("pedestrian", rng)
    # every box edge row/column holds dark outline pixels (outline value <= 0.12 + noise)
    for y0, x0, y1, x1 in (boxes * 64).round().astype(int):
        patch = image[y0:y1, x0:x1].max(-1)
        assert patch[0].min() < 0.3 and patch[-1].min() < 0.3
        assert patch[:, 0].min() < 0.3 and patch[:, -1].min() < 0.3


def test_k_shot():
    src = render_split("pedestrian", 12, seed=0)
    sub = k_shot(src, 5, seed=1)
    assert len(sub) == 5
    assert len({im.tobytes() for im in sub.arrays["image"]}) == 5
    np.testing.assert_array_equal(k_shot(src, 5, seed=1).arrays["boxes"], sub.arrays["boxes"])
    assert k_shot(src, None, 0) is src
    with pytest.raises(DomainError, match="k-shot"):
        k_shot(src, 13, 0)
    with pytest.raises(DomainError, match="unknown synthetic category"):
        render_image("cat", rng=np.random.default_rng(0))
