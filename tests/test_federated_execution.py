"""The client-execution strategies (vmap, scan, chunk) of the compiled round: same round as the
sequential reference, for a convolutional model; and how "auto" picks one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.config import ConfigError
from da_framework.errors import UserError
from da_framework.federated.algorithms import server_optimizer
from da_framework.federated.config import FedConfig
from da_framework.federated.execution import Execution, model_has_convolutions, resolve_execution
from da_framework.federated.simulation import LocalTraining, make_round_fn, place_clients, stack_clients
from da_framework.models import make_model
from federated_reference import reference_round  # tests/federated_reference.py

SIZES = [5, 13, 1, 20, 8]


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def cnn_round():
    """A tiny LeNet (two 5x5 convolutions) on 8x8 images, 5 uneven clients, FedProx + clipping."""
    rng = np.random.default_rng(0)
    clients = [{"image": rng.random((n, 8, 8, 1)).astype(np.float32), "label": rng.integers(0, 10, n).astype(np.int32)}
               for n in SIZES]
    model = make_model("lenet", 10, 8, channels=(2, 4), dense=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    spec = LocalTraining(model, batch_size=4, local_epochs=2, client_lr=0.2, mu=0.1)
    tx = server_optimizer("momentum", 0.5)
    ids, labeled = [4, 0, 9, 2, 7], [True, True, False, True, True]
    key = jax.random.key(3)
    ref, _ = reference_round(spec, tx, params, tx.init(params), clients, labeled, ids, key, 24, clip_norm=0.5)
    data, cids = place_clients(stack_clients(clients, labeled, max_examples=24), ids, None)
    return spec, tx, params, data, cids, key, ref


_RESULTS = {}


def _run(cnn_round, execution):
    """One round with ``execution`` (compiled once per module: LeNet rounds take seconds to compile)."""
    if execution not in _RESULTS:
        spec, tx, params, data, cids, key, _ = cnn_round
        rf = make_round_fn(spec, tx, 24, clip_norm=0.5, strategy=execution)
        _RESULTS[execution] = rf(params, tx.init(params), data, cids, key)
    return _RESULTS[execution]


SCAN, CHUNK = Execution("scan", loop_convs=True), Execution("chunk", 2, loop_convs=True)


@pytest.mark.parametrize("execution", [
    Execution("vmap"), SCAN, CHUNK,
    pytest.param(Execution("scan"), marks=pytest.mark.slow), pytest.param("auto", marks=pytest.mark.slow),
])
def test_every_strategy_equals_the_sequential_reference_for_a_cnn(cnn_round, execution):
    params, ref = cnn_round[2], cnn_round[-1]
    p, _, _ = _run(cnn_round, execution)
    assert _max_diff(p, params) > 1e-3  # it trained
    # float tolerance, not bitwise: the engines batch, mask and sum in another order than the loop
    assert _max_diff(p, ref) < 2e-6


def test_chunks_return_their_clients_in_client_order(cnn_round):
    # chunk sorts the clients by size; the example-weighted client loss (like the weighted
    # average of the updates) pairs per-client values with per-client weights, so outputs left
    # in sorted order would give another value
    _, _, m_scan = _run(cnn_round, SCAN)
    _, _, m_chunk = _run(cnn_round, CHUNK)
    assert set(m_scan) == {"client_loss", "update_norm_mean", "update_norm_max"}
    for k in m_scan:
        np.testing.assert_allclose(float(m_chunk[k]), float(m_scan[k]), rtol=1e-5)


def test_auto_picks_scan_for_convolutions_on_cpu_and_vmap_otherwise():
    lenet, mlp = make_model("lenet", 10, 8, channels=(2, 4), dense=8), make_model("mlp", 10, 8, hidden=(16,))
    assert model_has_convolutions(lenet, (8, 8, 1)) and not model_has_convolutions(mlp, (8, 8, 1))
    assert resolve_execution("auto", None, True, "cpu") == Execution("scan", None, loop_convs=True)
    assert resolve_execution("auto", None, False, "cpu") == Execution("scan")  # faster than vmap on both CPUs measured
    assert resolve_execution("auto", None, False, "gpu") == Execution("vmap")
    assert resolve_execution("auto", None, True, "gpu") == Execution("vmap")
    assert resolve_execution("scan", None, True, "gpu") == Execution("scan")  # XLA:GPU needs no conv rewrite
    assert resolve_execution("auto", 4, True, "cpu") == Execution("chunk", 4, loop_convs=True)
    assert resolve_execution("chunk", None, False, "cpu") == Execution("chunk", 10)
    with pytest.raises(UserError, match="valid: auto, vmap, scan, chunk"):
        resolve_execution("pmap", None, True, "cpu")
    with pytest.raises(ConfigError, match="client_execution"):
        FedConfig(client_execution="pmap")
    assert FedConfig(client_execution="scan").client_execution == "scan"


def test_default_client_execution_stays_out_of_the_config_dict():
    # runs recorded before the key existed keep their config hash (and record checks)
    assert "client_execution" not in FedConfig().to_dict()
    assert FedConfig(client_execution="scan").to_dict()["client_execution"] == "scan"
    assert FedConfig().replace(client_execution="chunk", client_chunk=4).client_execution == "chunk"
