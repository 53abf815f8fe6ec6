"""VOC detection domains on tfds mock data and hand-written raw records (no real VOC here)."""

import numpy as np
import pytest

from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import DomainError
from da_framework.detection.voc import letterbox, voc_detection_domain, voc_detection_record

tfds = pytest.importorskip("tensorflow_datasets")


def raw(labels, n_boxes=None, n_difficult=None, shape=(20, 40, 3)):
    n = len(labels)
    boxes = np.array([[0.1 * i, 0.2, 0.1 * i + 0.5, 0.9] for i in range(n if n_boxes is None else n_boxes)], np.float32)
    return {
        "image": np.full(shape, 255, np.uint8),
        "objects": {
            "bbox": boxes.reshape(-1, 4),
            "label": np.array(labels, np.int64),
            "is_difficult": np.arange(n if n_difficult is None else n_difficult) % 2 == 1,
        },
    }


def test_letterbox_keeps_aspect_and_scales_boxes():
    # 20x40 image into 16: scale 0.4 -> 8x16, padded rows 8..15; fy = 8/16, fx = 1.
    image, fy, fx = letterbox(np.full((20, 40, 3), 255, np.uint8), 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.float32
    assert (fy, fx) == (0.5, 1.0)
    np.testing.assert_allclose(image[:8], 1.0)
    np.testing.assert_array_equal(image[8:], 0.0)
    rec = voc_detection_record(raw([2, 14, 2]), 2, image_size=16, max_boxes=3)
    # bird boxes 0 and 2: [0, .2, .5, .9] and [.2, .2, .7, .9], y scaled by 0.5
    np.testing.assert_allclose(rec["boxes"][:2], [[0, 0.2, 0.25, 0.9], [0.1, 0.2, 0.35, 0.9]], atol=1e-6)
    assert rec["box_mask"].tolist() == [True, True, False] and rec["label"] == 1
    plain = voc_detection_record(raw([2]), 2, image_size=16, max_boxes=2, use_letterbox=False)
    np.testing.assert_allclose(plain["boxes"][0], [0, 0.2, 0.5, 0.9])
    np.testing.assert_allclose(plain["image"], 1.0)


def test_record_truncates_inconsistent_lengths():
    # 3 boxes, 2 labels, 4 difficult flags (as tfds mock data may give) -> 2 objects
    rec = voc_detection_record(raw([14, 14], n_boxes=3, n_difficult=4), 14, image_size=8, max_boxes=4)
    assert rec["box_mask"].tolist() == [True, True, False, False]
    assert rec["is_difficult"].tolist() == [False, True, False, False]
    none = voc_detection_record(raw([7]), 14, image_size=8, max_boxes=2)
    assert none["label"] == 0 and not none["box_mask"].any()


@pytest.mark.parametrize("year", [2007, 2012])
def test_domain_on_tfds_mock_data(year):
    with tfds.testing.mock_data(num_examples=24):
        for category in ("bird", "person"):
            label = 2 if category == "bird" else 14
            d = voc_detection_domain(
                category, year, data_dir="/nonexistent", image_size=32, max_boxes=5, in_memory=False
            )
            for split in ("train", "test"):
                src = d.splits[split]
                assert len(src) > 0
                for i in range(len(src)):
                    r = src[i]
                    assert r["image"].shape == (32, 32, 3) and r["boxes"].shape == (5, 4)
                    assert r["label"] == 1 and r["box_mask"].any(), "filtered images must hold the category"
                    b = r["boxes"][r["box_mask"]]
                    assert (b >= 0).all() and (b <= 1).all()
            del label
        bird = voc_detection_domain("bird", year, data_dir="/nonexistent", image_size=16)
        assert bird.splits["train"].arrays["image"].shape[1:] == (16, 16, 3)


def test_errors(tmp_path):
    with pytest.raises(DomainError, match="unknown VOC category"):
        voc_detection_domain("pedestrian")
    with pytest.raises(DomainError, match="unknown VOC year"):
        voc_detection_domain("bird", 2010)
    with pytest.raises(DatasetNotPreparedError, match="tfds build voc/2007"):
        voc_detection_domain("bird", data_dir=str(tmp_path))
