"""Image-file domains on generated trees: Office-31, Office-Home, VisDA-2017, DomainNet and ImageFolder layouts."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from PIL import Image

from da_framework.config import ExperimentConfig
from da_framework.data import RandomMappedSource, batch_iterator, get_domain
from da_framework.data.catalog import DatasetNotPreparedError
from da_framework.data.domain import DomainError
from da_framework.data.image_classes import DOMAINNET_CLASSES, OFFICE31_CLASSES, OFFICE_HOME_CLASSES, VISDA2017_CLASSES
from da_framework.data.image_folder import ImageTransform, random_resized_crop_box
from da_framework.train.loop import batch_streams, build, train


def write_image(path: Path, width: int = 12, height: int = 10, seed: int = 0) -> np.ndarray:
    """A random RGB image written as PNG or JPEG (by suffix); returns its uint8 pixels (PNG: exact)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def tree(root: Path, files: dict[str, int]) -> None:
    """``{"<class>/<file>": n}``: n images per entry, named ``<file>_<i>.<ext>``."""
    seed = 0
    for rel, n in files.items():
        stem, ext = os.path.splitext(rel)
        for i in range(n):
            write_image(root / f"{stem}_{i}{ext}", 10 + i, 8 + 2 * i, seed)
            seed += 1


def labels_of(domain, split: str = "test") -> list[int]:
    src = domain.split(split)
    return [int(src.source[i]["label"]) for i in range(len(src))]


# ------------------------------------------------------------------------ class ids and layouts


def test_class_lists_have_the_published_sizes_and_ids():
    sizes = ((OFFICE31_CLASSES, 31), (OFFICE_HOME_CLASSES, 65), (VISDA2017_CLASSES, 12), (DOMAINNET_CLASSES, 345))
    for classes, n in sizes:
        assert len(classes) == len(set(classes)) == n
    assert list(OFFICE31_CLASSES) == sorted(OFFICE31_CLASSES)  # alphabetical, as ImageFolder would order them
    # tllib's Office-Home order is not alphabetical: its image lists' label ids
    assert OFFICE_HOME_CLASSES.index("Drill") == 0 and OFFICE_HOME_CLASSES.index("Alarm_Clock") == 33
    assert OFFICE_HOME_CLASSES[-1] == "Marker" and VISDA2017_CLASSES.index("truck") == 11
    assert DOMAINNET_CLASSES.index("The_Eiffel_Tower") == 308 and DOMAINNET_CLASSES[-1] == "zigzag"


def test_office31_as_distributed_and_through_tllib_lists(tmp_path):
    root = tmp_path / "office31"
    tree(root / "amazon" / "images", {"back_pack/frame.jpg": 2, "trash_can/frame.jpg": 3})
    d = get_domain("office31/amazon@16", str(tmp_path))
    assert d.name == "office31/amazon@16" and d.num_classes == 31 and d.input_shape == (16, 16, 3)
    assert d.class_names == OFFICE31_CLASSES
    assert {s: len(d.splits[s]) for s in ("train", "val", "test")} == {"train": 5, "val": 5, "test": 5}
    assert labels_of(d) == [0, 0, 30, 30, 30]
    batch = next(batch_iterator(d.split("test"), 5, seed=0, shuffle=False, repeat=False))
    assert batch["image"].shape == (5, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    full = get_domain("office31/amazon", str(tmp_path))  # the registered default: 256 -> 224
    assert full.input_shape == (224, 224, 3) and full.split("test")[0]["image"].shape == (224, 224, 3)
    # tllib's image_list/amazon.txt, when present, is what is read (its labels, its subset)
    (root / "image_list").mkdir()
    (root / "image_list" / "amazon.txt").write_text(
        "amazon/images/trash_can/frame_1.jpg 30\n\namazon/images/back_pack/frame_0.jpg 0\n"
    )
    listed = get_domain("office31/amazon@16", str(tmp_path))
    assert labels_of(listed) == [30, 0] and listed.split("test").source[0]["path"].endswith("frame_1.jpg")


def test_office_home_folder_names_and_real_world_with_a_space(tmp_path):
    root = tmp_path / "OfficeHomeDataset_10072016"  # the archive's own folder name is accepted
    tree(root / "Real World", {"Drill/00001.jpg": 1, "Alarm_Clock/00001.jpg": 2, "Marker/00001.png": 1})
    d = get_domain("office_home/Real_World@16", str(tmp_path))
    assert d.num_classes == 65 and sorted(labels_of(d)) == [0, 33, 33, 64]
    assert labels_of(d) == [33, 33, 0, 64]  # class folders in sorted order, label = tllib id


def test_visda2017_official_list_and_folder_scan(tmp_path):
    root = tmp_path / "visda2017"
    tree(root / "train", {"aeroplane/src_1.png": 2, "truck/src_2.png": 1})
    (root / "train" / "image_list.txt").write_text("truck/src_2_0.png 11\naeroplane/src_1_1.png 0\n")
    tree(root / "validation", {"bicycle/a.jpg": 1, "truck/b.jpg": 2})
    synthetic, real = (get_domain(f"visda2017/{d}@16", str(tmp_path)) for d in ("train", "validation"))
    assert synthetic.num_classes == real.num_classes == 12
    assert labels_of(synthetic) == [11, 0]  # the list (paths relative to train/), not the 3 files
    assert labels_of(real) == [1, 11, 11]  # no list: class folders


def test_domainnet_split_lists_with_spaces_in_paths(tmp_path):
    root = tmp_path / "domainnet"
    tree(root / "clipart", {"aircraft_carrier/clipart_001.jpg": 2, "zigzag/clip art.jpg": 2})
    (root / "clipart_train.txt").write_text(
        "clipart/aircraft_carrier/clipart_001_0.jpg 0\n"
        "clipart/zigzag/clip art_0.jpg 344\nclipart/zigzag/clip art_1.jpg 344\n"
    )
    (root / "clipart_test.txt").write_text("clipart/aircraft_carrier/clipart_001_1.jpg 0\n")
    d = get_domain("domainnet/clipart@16", str(tmp_path))
    assert d.num_classes == 345 and [len(d.splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert labels_of(d, "train") == [0, 344, 344] and labels_of(d, "test") == [0]
    img = d.split("train")[1]["image"]  # decodes the file whose name has a space
    assert img.shape == (16, 16, 3)
    (root / "clipart_test.txt").unlink()
    with pytest.raises(DomainError, match="clipart_test.txt") as e:
        get_domain("domainnet/clipart@16", str(tmp_path))
    assert "\n" not in str(e.value)


def test_plain_image_folder(tmp_path):
    tree(tmp_path / "mine" / "photos", {"dog/a.png": 2, "cat/b.png": 1, "cat/sub/c.jpeg": 1})
    d = get_domain("imagefolder/mine/photos@16", str(tmp_path))
    assert d.class_names == ("cat", "dog") and d.num_classes == 2 and labels_of(d) == [0, 0, 1, 1]


# -------------------------------------------------------------------------------- transforms


def test_centre_crop_against_numpy_slices(tmp_path):
    px = write_image(tmp_path / "a.png", 23, 23, seed=1)
    # resize to its own size (no resampling), centre 16: top = left = round(3.5) = 4 (torchvision's CenterCrop)
    out = ImageTransform(resize=23, crop=16).test(Image.open(tmp_path / "a.png").convert("RGB"))
    np.testing.assert_array_equal(out, px[4:20, 4:20].astype(np.float32) / np.float32(255))
    # torchvision's Resize(shorter side): a 41x20 image at resize 20 is not resampled; left = round(12.5) = 12
    px = write_image(tmp_path / "b.png", 41, 20, seed=2)
    t = ImageTransform(resize=20, crop=16, resize_mode="shorter", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    out = t.test(Image.open(tmp_path / "b.png").convert("RGB"))
    expected = (px[2:18, 12:28].astype(np.float64) / 255 - [0.5, 0.25, 0.0]) / [0.5, 0.25, 2.0]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32
    # the square resize is PIL's bicubic to (resize, resize) (tllib's ResizeImage), then the crop
    im = Image.open(tmp_path / "b.png").convert("RGB")
    ref = np.asarray(im.resize((24, 24), Image.Resampling.BICUBIC))[4:20, 4:20]
    np.testing.assert_array_equal(ImageTransform(resize=24, crop=16).test(im), ref.astype(np.float32) / np.float32(255))
    with pytest.raises(DomainError, match="crop 30 must be in"):
        ImageTransform(resize=20, crop=30)


def test_random_resized_crop_box_follows_torchvision_rules():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = random_resized_crop_box(256, 200, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top <= 256 - h and 0 <= left <= 200 - w and h > 0 and w > 0
        assert 0.08 * 0.9 <= h * w / (256 * 200) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1  # rounding of w and h
    # no square crop of the whole area fits a 40x20 image: the fallback centre crop at ratio 1
    assert random_resized_crop_box(20, 40, (1.0, 1.0), (1.0, 1.0), rng) == (0, 10, 20, 20)


def test_train_transform_full_crop_and_flip_by_hand(tmp_path):
    px = write_image(tmp_path / "a.png", 16, 16, seed=3)
    im = Image.open(tmp_path / "a.png").convert("RGB")
    whole = dict(resize=16, crop=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(ImageTransform(flip_p=1.0, **whole).train(im, rng), px[:, ::-1] / np.float32(255))
    np.testing.assert_array_equal(ImageTransform(flip_p=0.0, **whole).train(im, rng), px / np.float32(255))


def test_augmentation_is_deterministic_per_seed_and_new_each_epoch(tmp_path):
    tree(tmp_path / "mine", {"a/x.png": 2, "b/y.png": 2})
    train_split = get_domain("imagefolder/mine@16", str(tmp_path)).split("train")

    def take(seed: int, n: int = 4) -> list[dict[str, np.ndarray]]:
        it = batch_iterator(train_split, 4, seed=seed, shuffle=False, read_threads=0)
        return [next(it) for _ in range(n)]

    a, b, c = take(3), take(3), take(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])  # another seed, other crops
    np.testing.assert_array_equal(a[0]["label"], a[1]["label"])  # unshuffled: same images each epoch ...
    assert not np.array_equal(a[0]["image"], a[1]["image"])  # ... augmented anew
    assert train_split[1]["image"].shape == (16, 16, 3)  # direct indexing: seeded by (seed, index)
    np.testing.assert_array_equal(train_split[1]["image"], train_split[1]["image"])


@dataclasses.dataclass(frozen=True)
class WithPid:
    """Adds the id of the process that ran the record function (to see grain's workers)."""

    fn: Any

    def __call__(self, record, rng):
        return {**self.fn(record, rng), "pid": np.int64(os.getpid())}


def test_grain_worker_processes_decode_and_keep_the_stream(tmp_path):
    tree(tmp_path / "mine", {"a/x.png": 3, "b/y.jpg": 2})
    split = get_domain("imagefolder/mine@16", str(tmp_path)).split("train")
    probe = RandomMappedSource(split.source, WithPid(split.fn))
    main = batch_iterator(probe, 2, seed=5, read_threads=0)
    workers = batch_iterator(probe, 2, seed=5, workers=2)
    pids = set()
    for _ in range(6):
        x, y = next(main), next(workers)
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["image"], y["image"])
        assert set(x["pid"]) == {os.getpid()}
        pids |= set(y["pid"].tolist())
    assert pids and os.getpid() not in pids  # decoded and augmented in worker processes


def test_evaluation_reads_through_grain_workers_with_the_same_predictions(tmp_path):
    """predict_split with 2 worker processes returns exactly the in-process predictions, in order."""
    from da_framework.models.registry import make_model
    from da_framework.train.evaluate import make_predict_fn, predict_split

    tree(tmp_path / "mine", {"a/x.png": 3, "b/y.jpg": 2})
    split = get_domain("imagefolder/mine@16", str(tmp_path)).split("test")
    model = make_model("mlp", 2, None, hidden=(4,))
    variables = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    predict = make_predict_fn(model)
    here = predict_split(predict, variables, split, 2, read_threads=0)
    spawned = predict_split(predict, variables, split, 2, workers=2)
    assert here["label"].tolist() == [0, 0, 0, 1, 1]
    for k in ("logits", "features", "label"):
        np.testing.assert_array_equal(here[k], spawned[k])


# ------------------------------------------------------------------------------------ errors


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_folders_name_the_expected_layout(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as e:
        get_domain("office31/amazon", str(tmp_path))
    message = one_line(e)
    assert f"{tmp_path}/office31/amazon/images/<class>/<image>.jpg" in message and "image_list/amazon.txt" in message
    assert "$DA_DATA_DIR" in message
    for name, part in (
        ("office_home/Art", "office_home/Art/<class>/<image>.jpg"),
        ("visda2017/validation", "visda2017/validation/image_list.txt"),
        ("domainnet/sketch", "domainnet/sketch_train.txt"),
        ("imagefolder/nothing", "<data_dir>/<folder>/<class>/<image>"),
    ):
        with pytest.raises(DatasetNotPreparedError) as e:
            get_domain(name, str(tmp_path))
        assert part in one_line(e)


def test_bad_names_trees_and_lists_are_one_line_errors(tmp_path):
    with pytest.raises(DomainError, match="unknown Office-31 domain 'office31/kitchen'; valid: office31/amazon") as e:
        get_domain("office31/kitchen", str(tmp_path))
    one_line(e)
    with pytest.raises(DomainError, match=r"unknown domain 'officehome/Art'.*office_home/<Art\|Clipart") as e:
        get_domain("officehome/Art", str(tmp_path))
    one_line(e)
    with pytest.raises(DomainError, match="bad size suffix"):
        get_domain("office31/amazon@big", str(tmp_path))
    with pytest.raises(DomainError, match="relative folder"):
        get_domain("imagefolder/../etc", str(tmp_path))
    tree(tmp_path / "mine", {"a/x.png": 1})
    (tmp_path / "mine" / "empty").mkdir()
    with pytest.raises(DomainError, match="class folder .*empty has no images") as e:
        get_domain("imagefolder/mine", str(tmp_path))
    one_line(e)
    tree(tmp_path / "office31" / "dslr" / "images", {"bike/a.jpg": 1, "bicycle/b.jpg": 1})
    with pytest.raises(DomainError, match="bicycle is not a class of office31/dslr") as e:
        get_domain("office31/dslr", str(tmp_path))
    one_line(e)
    lists = tmp_path / "office31" / "image_list"
    lists.mkdir()
    cases = (
        ("webcam/images/bike/a.jpg\n", "amazon.txt:1: expected '<relative path> <label>'"),
        ("x.jpg 31\n", "label 31 is outside"),
        ("missing.jpg 3\n", "first image .*missing.jpg does not exist"),
    )
    for text, match in cases:
        (lists / "amazon.txt").write_text(text)
        with pytest.raises(DomainError, match=match) as e:
            get_domain("office31/amazon", str(tmp_path))
        one_line(e)
    (tmp_path / "mine" / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DomainError, match="cannot read image .*broken.png") as e:
        get_domain("imagefolder/mine@16", str(tmp_path)).split("test")[1]
    one_line(e)


# ------------------------------------------------------------------------------------- training


def office_pair_config(tmp_path: Path, **overrides: Any) -> ExperimentConfig:
    tree(tmp_path / "office31" / "amazon" / "images", {"back_pack/a.jpg": 3, "bike/b.jpg": 3})
    tree(tmp_path / "office31" / "webcam" / "images", {"back_pack/c.jpg": 2, "bike/d.png": 2})
    return ExperimentConfig(
        source="office31/amazon@28", target="office31/webcam@28", data_dir=str(tmp_path), method="source_only",
        model="lenet", model_kwargs={"channels": (4, 8), "dense": 16}, steps=2, batch_size=4, log_every=2,
        eval_batch_size=8, data_threads=0, **overrides,
    )


def test_image_domains_feed_the_training_streams(tmp_path):
    exp = build(office_pair_config(tmp_path))
    src, tgt = batch_streams(exp, 0, 4)
    s, t = next(src), next(tgt)
    assert s["image"].shape == t["image"].shape == (4, 28, 28, 3) and s["image"].dtype == np.float32
    assert set(s) == {"image", "label"} and set(t) == {"image"} and set(s["label"].tolist()) <= {0, 1}


@pytest.mark.slow
def test_train_runs_on_image_folder_domains(tmp_path):
    result = train(office_pair_config(tmp_path))
    assert result.compile_count == 1 and np.isfinite(result.history[0]["loss"])
    assert 0.0 <= result.metrics["target_test_accuracy"] <= 1.0
    assert len(result.metrics["target_test_per_class_accuracy"]) == 31
