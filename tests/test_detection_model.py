"""The centre-point detector: shapes, focal loss against NumPy, a jitted step that learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.detection.boxes import encode_centers
from da_framework.detection.model import (
    DetectorError,
    HeadOutputs,
    detection_loss,
    encode_batch,
    focal_loss,
    make_detector,
)
from da_framework.detection.synthetic import render_split
from da_framework.detection.train import (
    evaluate_ap,
    fit,
    grid_size,
    init_detector,
    init_state,
    make_detection_step,
    random_flip,
)
from da_framework.losses.mmd import mk_mmd

TINY = {"width": 8, "head_channels": 8}


def np_focal(logits, target, a=2.0, b=4.0):
    x, y = np.asarray(logits, np.float64), np.asarray(target, np.float64)
    p = 1 / (1 + np.exp(-x))
    return -np.sum(np.where(y >= 1, (1 - p) ** a * np.log(p), (1 - y) ** b * p**a * np.log(1 - p)))


def test_focal_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 5, 1)).astype(np.float32) * 3
    target = rng.uniform(size=(2, 5, 5, 1)).astype(np.float32)
    target[0, 2, 2, 0] = target[1, 0, 4, 0] = 1.0
    got = focal_loss(jnp.asarray(logits), jnp.asarray(target))
    np.testing.assert_allclose(got, np_focal(logits, target), rtol=1e-5)


def test_model_shapes_and_errors():
    model = make_detector(num_classes=2, **TINY)
    params = jax.jit(lambda k: init_detector(k, model, (64, 64, 3)))(jax.random.PRNGKey(0))
    out, feats = jax.jit(model.apply)({"params": params}, jnp.zeros((3, 64, 64, 3)))
    assert out.heatmap.shape == out.offset.shape == out.log_size.shape == (3, 16, 16, 2)
    assert feats.shape == (3, 32) and grid_size(model, params, (64, 64, 3)) == 16
    # heatmap starts at the 0.1 prior
    np.testing.assert_allclose(jax.nn.sigmoid(out.heatmap).mean(), 0.1, atol=0.05)
    with pytest.raises(DetectorError, match="unknown detector backbone"):
        make_detector("lenet")


def test_loss_is_zero_for_perfect_regression():
    t = encode_centers(jnp.array([[0.1, 0.1, 0.5, 0.3]]), jnp.array([0]), jnp.array([True]), 8, 1)
    batch = jax.tree.map(lambda x: x[None], t)
    from da_framework.detection.model import HeadOutputs

    perfect = HeadOutputs(jnp.where(batch.heatmap >= 1, 30.0, -30.0), batch.offset, batch.log_size)
    total, parts = detection_loss(perfect, batch)
    assert float(parts["offset"]) == 0.0 and float(parts["size"]) == 0.0 and float(total) < 1e-6
    worse = HeadOutputs(perfect.heatmap, batch.offset + 0.5, batch.log_size)
    assert float(detection_loss(worse, batch)[1]["offset"]) == pytest.approx(1.0)  # 2 coords x 0.5 / 1 object


def test_random_flip_moves_boxes_with_pixels():
    images = jnp.zeros((1, 8, 8, 1)).at[0, 2, 1, 0].set(1.0)  # pixel at row 2, col 1
    boxes = jnp.array([[[2 / 8, 1 / 8, 3 / 8, 2 / 8]]])
    for seed in range(6):
        im, bx = random_flip(jax.random.PRNGKey(seed), images, boxes)
        y0, x0 = int(bx[0, 0, 0] * 8), int(bx[0, 0, 1] * 8)
        assert float(im[0, y0, x0, 0]) == 1.0


@pytest.fixture(scope="module")
def data():
    return render_split("pedestrian", 4, seed=0, size=32), render_split("bird", 4, seed=1, size=32)


@pytest.mark.slow
def test_step_is_pure_and_learns(data):
    peds, birds = data
    model = make_detector(**TINY)
    params = init_detector(jax.random.PRNGKey(0), model, (32, 32, 3))
    tx = optax.adam(3e-3)
    batch = {k: jnp.asarray(v) for k, v in peds.arrays.items() if k in ("image", "boxes", "box_mask")}
    step = jax.jit(make_detection_step(model, tx, 8, align_weight=0.5, augment=False))
    xs, xt = jnp.asarray(birds.arrays["image"]), batch["image"]
    state = init_state(params, tx)
    s1, m1 = step(state, batch, xs, xt, jax.random.PRNGKey(1))
    s1b, m1b = step(state, batch, xs, xt, jax.random.PRNGKey(1))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s1.params, s1b.params))
    assert {k: float(v) for k, v in m1b.items()} == {k: float(v) for k, v in m1.items()}
    # the first step's terms at the initial parameters: MK-MMD of the pooled features of the
    # two alignment batches, and the CenterNet loss of the (unflipped) labelled batch
    @jax.jit
    def reference(p):
        _, feats = model.apply({"params": p}, jnp.concatenate([xs, xt]), train=True)
        outputs, _ = model.apply({"params": p}, batch["image"], train=True)
        labels = jnp.zeros(batch["boxes"].shape[:2], jnp.int32)
        det, _ = detection_loss(outputs, encode_batch(batch["boxes"], labels, batch["box_mask"], 8, 1))
        return mk_mmd(feats[: len(xs)], feats[len(xs) :]), det

    align, det = reference(params)
    np.testing.assert_allclose(m1["loss/align"], align, rtol=1e-5)
    np.testing.assert_allclose(m1["loss"], det + 0.5 * align, rtol=1e-5)
    for i in range(25):
        state, m = step(state, batch, xs, xt, jax.random.PRNGKey(i))
    assert float(m["loss"]) < 0.6 * float(m1["loss"])
    assert int(state.step) == 25
    with pytest.raises(ValueError, match="align_weight"):
        make_detection_step(model, tx, 16, align_weight=-1.0)


class _Oracle:
    """A stand-in detector whose "parameters" are its head outputs for the whole split."""

    def apply(self, variables, images):
        return variables["params"], None


def test_evaluate_ap_of_hand_made_detectors(data):
    peds, _ = data  # 4 images, 7 boxes, none difficult; grid 8 at 32x32 pixels
    a = peds.arrays
    assert int(a["box_mask"].sum()) == 7 and not a["is_difficult"].any()
    t = encode_batch(jnp.asarray(a["boxes"]), jnp.zeros(a["box_mask"].shape, jnp.int32), jnp.asarray(a["box_mask"]), 8, 1)
    perfect = HeadOutputs(jnp.where(t.heatmap >= 1, 30.0, -30.0), t.offset, t.log_size)
    assert evaluate_ap(_Oracle(), perfect, peds) == {"ap50": 1.0, "ap50_voc07": 1.0}
    # image 1's only object missed: precision 1 up to recall 6/7, so AP = 6/7 and the 11-point
    # AP = 9/11 (recall levels 0, 0.1, ..., 0.8 reached; 0.9 and 1.0 not)
    missed = perfect._replace(heatmap=perfect.heatmap.at[1].set(-30.0))
    ap = evaluate_ap(_Oracle(), missed, peds)
    assert ap["ap50"] == pytest.approx(6 / 7) and ap["ap50_voc07"] == pytest.approx(9 / 11)
    # boxes of half the height and width: IoU 1/4 < 0.5, no true positive
    half = perfect._replace(log_size=perfect.log_size - np.log(2.0))
    assert evaluate_ap(_Oracle(), half, peds) == {"ap50": 0.0, "ap50_voc07": 0.0}


@pytest.mark.slow
def test_fit_and_evaluate_run(data):
    peds, birds = data
    model = make_detector(**TINY)
    params = fit(model, peds, steps=3, seed=0, batch_size=4)
    assert set(evaluate_ap(model, params, peds)) == {"ap50", "ap50_voc07"}
    align = {"align_weight": 1.0, "align_source": birds, "align_target": peds}
    tuned = fit(model, peds, steps=2, seed=0, batch_size=4, init_params=params, **align)
    assert jax.tree.structure(tuned) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="align_source"):
        fit(model, peds, steps=1, seed=0, align_weight=1.0)
