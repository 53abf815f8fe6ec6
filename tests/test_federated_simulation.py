"""The vmapped, masked, sharded round engine against the plain sequential reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from da_framework.federated.adaptation import adaptation_method
from da_framework.federated.algorithms import server_optimizer
from da_framework.federated.simulation import (
    FederatedError,
    LocalTraining,
    make_client_mesh,
    make_client_update,
    make_round_fn,
    padded_client_ids,
    place_clients,
    replicate_tree,
    stack_clients,
)
from da_framework.models import make_model
from federated_reference import reference_round  # tests/federated_reference.py

SIZES = [5, 13, 1, 20, 8]  # uneven; 1 < B and 5, 13 not multiples of B


def _clients(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"image": rng.random((n, 4, 4, 1)).astype(np.float32), "label": rng.integers(0, 10, n).astype(np.int32)}
        for n in sizes
    ]


def _setup(mu=0.0, adaptation=None, epochs=2):
    model = make_model("mlp", 10, 8, hidden=(16,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["params"]
    spec = LocalTraining(model, batch_size=4, local_epochs=epochs, client_lr=0.2, mu=mu, adaptation=adaptation_method(adaptation))
    return spec, params


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize(
    "mu,adaptation,labeled,clip,server,rounds",
    [
        (0.0, None, [True] * 5, None, "sgd", 2),  # FedAvg
        (0.5, None, [True] * 5, 0.3, "adam", 2),  # FedProx + clipping + FedAdam
        (0.0, "0.5*entropy", [True, False, True, False, True], None, "momentum", 1),  # federated DA
    ],
)
def test_vmapped_round_equals_sequential_reference(mu, adaptation, labeled, clip, server, rounds, monkeypatch):
    spec, params = _setup(mu, adaptation)
    steps = _record_reference_steps(monkeypatch)
    tx = server_optimizer(server, 0.5)
    clients, ids = _clients(), [4, 0, 9, 2, 7]
    n_max = 24  # padded beyond the largest client: extra padding must not matter
    round_fn = make_round_fn(spec, tx, n_max, clip_norm=clip)
    data = stack_clients(clients, labeled, max_examples=n_max)
    d, i = place_clients(data, ids, None)
    key = jax.random.key(3)
    p, s = params, tx.init(params)
    p_ref, s_ref = params, tx.init(params)
    for r in range(rounds):  # with two rounds the server optimiser state carries over
        p, s, metrics = round_fn(p, s, d, i, jax.random.fold_in(key, r))
        steps.clear()  # keep the last round's local steps only
        p_ref, s_ref = reference_round(spec, tx, p_ref, s_ref, clients, labeled, ids, jax.random.fold_in(key, r), n_max, clip)
    assert _max_diff(p, params) > 1e-3  # it trained
    assert _max_diff(p, p_ref) < 2e-5
    # client_loss: each client's objective averaged over its real local steps, then weighted by
    # its example count (float64 recomputation from the sequential reference's own steps)
    step_losses = [_objective_f64(spec, *step) for step in steps]
    per_client, start = [], 0
    for n in SIZES:
        k = spec.local_epochs * -(-n // spec.batch_size)
        per_client.append(np.mean(step_losses[start : start + k]))
        start += k
    assert start == len(step_losses)
    np.testing.assert_allclose(float(metrics["client_loss"]), np.average(per_client, weights=SIZES), rtol=1e-4)


def _record_reference_steps(monkeypatch):
    """Makes reference_round log the inputs of every local step it takes (in client order)."""
    import federated_reference as sim

    calls, original = [], sim._reference_step

    def recording(spec):
        step = original(spec)

        def logged(params, opt_state, global_params, x, y, x_wrapped, labeled, key, progress):
            calls.append((params, global_params, x, y, x_wrapped, labeled))
            return step(params, opt_state, global_params, x, y, x_wrapped, labeled, key, progress)

        return logged

    monkeypatch.setattr(sim, "_reference_step", recording)
    return calls


def _objective_f64(spec, params, global_params, x, y, x_wrapped, labeled):
    """One client step's objective in float64: labelled CE on the real rows + FedProx + adaptation."""

    w = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def log_softmax(inputs):  # the mlp(hidden=(16,)) classifier of _setup, in NumPy
        h = np.maximum(np.reshape(inputs, (len(inputs), -1)) @ w["backbone"]["Dense_0"]["kernel"]
                       + w["backbone"]["Dense_0"]["bias"], 0.0)
        h = h @ w["bottleneck"]["Dense_0"]["kernel"] + w["bottleneck"]["Dense_0"]["bias"]
        ln = w["bottleneck"]["LayerNorm_0"]
        h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-6) * ln["scale"] + ln["bias"]
        z = np.maximum(h, 0.0) @ w["head"]["kernel"] + w["head"]["bias"]
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    total = labeled * -np.mean(log_softmax(x)[np.arange(len(y)), y])
    sq = sum(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(global_params)))
    total += 0.5 * spec.mu * sq
    if spec.adaptation is not None:  # the only adaptation used here: 0.5 * mean entropy of the wrapped batch
        assert spec.adaptation.spec() == "0.5*entropy"
        lp = log_softmax(x_wrapped)
        total += 0.5 * np.mean(-np.sum(np.exp(lp) * lp, axis=1))
    return total


def test_unlabelled_client_labels_never_reach_training():
    clients = _clients([6, 6])
    a = stack_clients(clients, [True, False])
    assert not a.y[1].any() and a.y[0].tolist() == clients[0]["label"].tolist()


def test_padding_clients_and_step_masks_are_no_ops():
    spec, params = _setup()
    tx = server_optimizer("sgd", 1.0)
    clients = _clients([5, 13])
    rf = make_round_fn(spec, tx, 13)
    a = stack_clients(clients, max_examples=13)
    b = stack_clients(clients, max_examples=13, pad_clients_to=4)  # two empty clients appended
    assert b.num_clients == 4 and b.num_examples.tolist() == [5, 13, 0, 0]
    pa, _, _ = rf(params, tx.init(params), *place_clients(a, [0, 1], None), jax.random.key(1))
    pb, _, _ = rf(params, tx.init(params), *place_clients(b, padded_client_ids([0, 1], 4, 2), None), jax.random.key(1))
    assert _max_diff(pa, pb) < 1e-6
    # chunked clients (lax.map over vmapped chunks) compute the same round
    rc = make_round_fn(spec, tx, 13, client_chunk=2)
    pc, _, _ = rc(params, tx.init(params), *place_clients(b, padded_client_ids([0, 1], 4, 2), None), jax.random.key(1))
    assert _max_diff(pa, pc) < 1e-6
    # a client's real local step count is E * ceil(n / B)
    cu = jax.jit(make_client_update(spec, 13))
    one = jax.tree.map(lambda x: x[0], jax.tree.map(jnp.asarray, a))
    _, m = cu(params, one, jax.random.key(0))
    assert int(m["local_steps"]) == 2 * 2


def test_sharded_round_on_four_devices_equals_one_device():
    assert len(jax.devices()) >= 4
    spec, params = _setup(mu=0.1)
    tx = server_optimizer("yogi", 0.1)
    clients, ids = _clients([5, 13, 1, 20, 8, 3], seed=1), [0, 1, 2, 3, 4, 5]
    data = stack_clients(clients, max_examples=20, pad_clients_to=4)  # 6 -> 8 clients, 2 per device
    cids = padded_client_ids(ids, data.num_clients, 6)
    rf = make_round_fn(spec, tx, 20, clip_norm=1.0)
    p1, s1, m1 = rf(params, tx.init(params), *place_clients(data, cids, None), jax.random.key(2))
    mesh = make_client_mesh(4)
    d4, i4 = place_clients(data, cids, mesh)
    assert len(d4.x.sharding.device_set) == 4 and d4.x.addressable_shards[0].data.shape[0] == 2
    p4, s4, m4 = rf(replicate_tree(params, mesh), replicate_tree(tx.init(params), mesh), d4, i4, jax.random.key(2))
    assert _max_diff(p1, p4) < 1e-5 and _max_diff(s1, s4) < 1e-5
    np.testing.assert_allclose(float(m1["client_loss"]), float(m4["client_loss"]), rtol=1e-5)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(FederatedError, match="max_examples"):
        stack_clients(_clients([5, 13]), max_examples=8)
    with pytest.raises(FederatedError, match="labeled flags"):
        stack_clients(_clients([5]), [True, False])
    spec, params = _setup()
    data = stack_clients(_clients([5, 7]), pad_clients_to=4)
    with pytest.raises(ValueError, match="pad_clients_to"):
        place_clients(stack_clients(_clients([5, 7])), [0, 1], make_client_mesh(4))
    with pytest.raises(FederatedError, match="padded to"):
        rf = make_round_fn(spec, server_optimizer("sgd"), 32)
        rf(params, server_optimizer("sgd").init(params), *place_clients(data, [0, 1, 2, 3], None), jax.random.key(0))
