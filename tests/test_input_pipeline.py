"""The input pipeline: device prefetch and grain read-ahead keep batches and their order."""

import jax
import numpy as np
import pytest

from da_framework.config import ConfigError, ExperimentConfig
from da_framework.data.domain import ArraySource, DomainError, MappedSource, batch_iterator
from da_framework.data.prefetch import prefetch_to_device
from da_framework.train import make_mesh, shard_batch, train


def _host_batches(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.random((8, 4, 4, 1), dtype=np.float32), "label": rng.integers(0, 10, 8)} for _ in range(n)]


@pytest.mark.parametrize("size", [0, 1, 2, 5])
def test_prefetch_yields_the_same_batches_in_the_same_order(size):
    host = _host_batches(7)
    out = list(prefetch_to_device(iter(host), size, jax.device_put))
    assert len(out) == len(host)
    for a, b in zip(host, out):
        assert isinstance(b["image"], jax.Array)
        np.testing.assert_array_equal(np.asarray(b["image"]), a["image"])
        np.testing.assert_array_equal(np.asarray(b["label"]), a["label"])


def test_prefetch_places_ahead_of_the_consumer():
    placed = []

    def place(x):
        placed.append(x)
        return x

    it = prefetch_to_device(iter(range(10)), 2, place)
    assert placed == []  # lazy until asked
    assert next(it) == 0
    assert placed == [0, 1, 2]  # while batch 0 is in use, batches 1 and 2 are placed
    assert next(it) == 1 and placed == [0, 1, 2, 3]


def test_prefetch_with_sharding_and_bad_size():
    mesh = make_mesh(4)
    host = _host_batches(3)
    out = list(prefetch_to_device(host, 2, lambda b: shard_batch(b, mesh)))
    assert len(out[0]["image"].sharding.device_set) == 4
    np.testing.assert_array_equal(np.asarray(out[2]["image"]), host[2]["image"])
    with pytest.raises(ValueError, match="prefetch size must be >= 0"):
        next(prefetch_to_device(host, -1, jax.device_put))


def _double(record):
    return {"image": record["image"] * 2.0, "label": record["label"]}


def test_grain_read_ahead_keeps_the_stream():
    """Catalog-style (non-array) sources: threads change nothing about the batches."""
    rng = np.random.default_rng(0)
    arrays = {"image": rng.random((37, 3), dtype=np.float32), "label": np.arange(37)}
    source = MappedSource(ArraySource(arrays), _double)

    def take(it, n=12):
        return [next(it) for _ in range(n)]

    plain = take(batch_iterator(source, 5, seed=3, read_threads=0))
    threaded = take(batch_iterator(source, 5, seed=3, read_threads=4))
    for a, b in zip(plain, threaded):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_allclose(plain[0]["image"], 2.0 * arrays["image"][plain[0]["label"]])
    with pytest.raises(DomainError, match="workers and read_threads must be >= 0"):
        next(batch_iterator(source, 5, seed=3, workers=-1))


def test_grain_worker_processes_keep_the_stream():
    rng = np.random.default_rng(0)
    arrays = {"image": rng.random((37, 3), dtype=np.float32), "label": np.arange(37)}
    source = MappedSource(ArraySource(arrays), _double)
    plain = batch_iterator(source, 5, seed=3, read_threads=0)
    workers = batch_iterator(source, 5, seed=3, workers=2)
    for _ in range(10):
        np.testing.assert_array_equal(next(plain)["label"], next(workers)["label"])


@pytest.mark.slow  # 17 s of CI time; run with -m slow
def test_training_does_not_depend_on_device_prefetch():
    tiny = dict(model="lenet", model_kwargs={"channels": (4, 8), "dense": 32}, bottleneck_dim=16, batch_size=16)
    cfg = ExperimentConfig(method="dan", steps=5, log_every=5, **tiny)
    a, b = train(cfg), train(cfg.replace(device_prefetch=0))
    assert a.history == b.history and a.compile_count == 1
    with pytest.raises(ConfigError, match="device_prefetch"):
        cfg.replace(device_prefetch=-1)
