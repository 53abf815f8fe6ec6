"""The Flower app (Message API) against the in-process simulation.

A real loopback deployment (a SuperLink and two SuperNodes as separate processes on
127.0.0.1), Flower's simulation runtime (Ray) and an in-process grid must all give
``run_federated``'s global model; a client that fails mid-round is dropped or stops the run
per ``min-train-replies``.  The references are ``run_federated`` (the compiled, vmapped
engine) and, for a round over survivors, the plain sequential float64 loop of
tests/federated_reference.py.
"""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("flwr")

from federated_reference import reference_round
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from da_framework.config import from_dict
from da_framework.errors import UserError  # noqa: E402
from da_framework.federated import flower as F  # noqa: E402
from da_framework.federated import flower_runtime as FR  # noqa: E402
from da_framework.federated import flower_strategy as FS  # noqa: E402
from da_framework.federated.simulation import FederatedError  # noqa: E402
from da_framework.federated.algorithms import server_optimizer
from da_framework.federated.config import fed_config_from_dict
from da_framework.federated.runner import init_global_params, local_training, make_clients, run_federated

ROOT = Path(__file__).resolve().parent.parent
EXP = {"model": "mlp", "model_kwargs": {"hidden": [16]}, "bottleneck_dim": 8, "seed": 3}
FED = {
    "algorithm": "fedprox", "prox_mu": 0.1, "rounds": 2, "num_clients": 2, "clients_per_round": 2,
    "partition": "domain", "domains": ["digits/source", "digits/blur"], "local_batch_size": 32,
    "client_lr": 0.05, "server_optimizer": "momentum", "server_lr": 1.0, "eval_every": 0,
}


def _configs(**fed_over):
    return from_dict(EXP), fed_config_from_dict({**FED, **fed_over})


@pytest.fixture(scope="module")
def reference():
    """run_federated's result for EXP/FED (2 rounds) and the initial parameters."""
    config, fed = _configs()
    spec = local_training(config, fed, 10)
    return run_federated(config, fed), init_global_params(config, fed, spec, (16, 16, 1))


def _max_diff(a_leaves, b_leaves):
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(a_leaves, b_leaves, strict=True))


def _saved_leaves(out: Path):
    z = np.load(out / "global.npz")
    return [z[f"arr_{i}"] for i in range(len(z.files))]


def _check_equal_to_reference(leaves, history, reference):
    full, init = reference
    ref = jax.tree.leaves(full.params)
    assert _max_diff(ref, jax.tree.leaves(init)) > 1e-2  # training moved the model: not vacuous
    assert _max_diff(leaves, ref) < 2e-5
    for h, r in zip(history, full.history, strict=True):  # round by round, not just the end
        for k in ("client_loss", "update_norm_mean", "update_norm_max"):
            assert h[k] == pytest.approx(r[k], rel=1e-5, abs=1e-6), (h["round"], k)
    assert history[-1]["test_accuracy"] == pytest.approx(full.metrics["test_accuracy"], abs=1e-9)


# ---------------------------------------------------------------------------- cheap checks


def test_app_pyproject_is_valid_flower_config_and_committed_copy_matches(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    app = F.write_app(tmp_path / "app")
    config, warnings = load_and_validate(app / "pyproject.toml")  # imports nothing: checks the component refs
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "da_framework.federated.flower:server_app", "clientapp": "da_framework.federated.flower:client_app"}
    assert warnings == []
    assert (ROOT / "examples/flower_app/pyproject.toml").read_text() == F.app_pyproject()


def test_params_travel_by_name_and_a_wrong_model_is_named():
    config, fed = _configs()
    spec = local_training(config, fed, 10)
    params = init_global_params(config, fed, spec, (16, 16, 1))
    record = FS.params_to_arrays(params)
    back = FS.arrays_to_params(record, params)
    assert _max_diff(jax.tree.leaves(back), jax.tree.leaves(params)) == 0.0
    other = init_global_params(from_dict({**EXP, "model_kwargs": {"hidden": [12]}}), fed,
                               local_training(from_dict({**EXP, "model_kwargs": {"hidden": [12]}}), fed, 10), (16, 16, 1))
    with pytest.raises(FederatedError, match=r"parameter .* has shape \(.*\), the model expects"):
        FS.arrays_to_params(FS.params_to_arrays(other), params)


def test_da_fed_refuses_an_unknown_engine(tmp_path):
    from typer.testing import CliRunner

    from da_framework.cli import app

    r = CliRunner().invoke(app, ["fed", "fed_digits_transfer", "--engine", "nope", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "unknown --engine 'nope'; engines: jax, flower-sim" in r.output


def test_bad_task_is_one_line_user_error():
    with pytest.raises(UserError, match="has no task"):
        FS.parse_task("")
    with pytest.raises(UserError, match="not JSON"):
        FS.parse_task("{experiment:")


class LoopGrid(Grid):
    """An in-process Grid: each pushed message runs the ClientApp at once, an exception in
    it becomes an error reply (as a SuperNode does).  Node ids are large random integers."""

    def __init__(self, node_configs, run_config):
        rng = np.random.default_rng(7)
        self.nodes = {int(rng.integers(1 << 40, 1 << 62)): cfg for cfg in node_configs}
        self.run_config = run_config
        self.replies = {}

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_src_node_id"] = 1
            ctx = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config=self.nodes[msg.metadata.dst_node_id],
                          state=RecordDict(), run_config=self.run_config)
            try:
                reply = F.client_app(msg, ctx)
            except Exception as e:  # noqa: BLE001 - what Flower does with a raising ClientApp
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(e)}:<'{e}'>"), reply_to=msg)
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture
def task_identity(monkeypatch):
    """The process identity Flower's runtimes set before a ServerApp runs (Message() reads it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _loop_run(fed, node_configs, min_train_replies=0):
    config = from_dict(EXP)
    task = json.dumps(FS.task_dict(config, fed))
    grid = LoopGrid(node_configs, {"task": task})
    result = {}
    params = F.run_server(grid, task, round_timeout=30.0, min_train_replies=min_train_replies, connect_timeout=5.0, result=result)
    return params, result


def test_in_process_grid_with_sampled_clients_equals_run_federated(task_identity):
    # 3 clients, 2 per round: the server must map sampled partition ids to the right nodes
    config, fed = _configs(num_clients=3, clients_per_round=2, rounds=2,
                           domains=["digits/source", "digits/blur", "digits/scale"], server_optimizer="adam", server_lr=0.05)
    params, result = _loop_run(fed, [{"partition-id": k, "num-partitions": 3} for k in (2, 0, 1)])
    ref = run_federated(config, fed)
    assert [h["clients"] for h in result["history"]] != [[0, 1, 2]] * 2  # sampling really left clients out
    assert _max_diff(jax.tree.leaves(params), jax.tree.leaves(ref.params)) < 2e-5
    for h, r in zip(result["history"], ref.history, strict=True):
        assert h["client_loss"] == pytest.approx(r["client_loss"], rel=1e-5)


def test_raising_client_stops_the_round_with_one_line_or_is_dropped_per_min_train_replies(reference, task_identity):
    _, fed = _configs()
    nodes = [{"partition-id": 0, "num-partitions": 2},
             {"partition-id": 1, "num-partitions": 2, F.FAIL_IN_ROUND_KEY: 2, F.FAIL_MODE_KEY: "raise"}]
    with pytest.raises(FS.RoundFailedError) as info:
        _loop_run(fed, nodes, min_train_replies=0)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("round 2: 1 of 2 sampled clients replied, 2 needed (client 1: ")
    assert "InjectedClientFailure" in msg and "min-train-replies" in msg
    params, result = _loop_run(fed, nodes, min_train_replies=1)
    _check_survivor_round(jax.tree.leaves(params), result["history"], reference)


def _check_survivor_round(leaves, history, reference):
    """Round 1 over both clients, round 2 over client 0 alone: the float64 sequential loop."""
    config, fed = _configs()
    clients = make_clients(config, fed)
    # (a tuple: the sequential reference hashes the model)
    spec = local_training(from_dict({**EXP, "model_kwargs": {"hidden": (16,)}}), fed, 10)
    p = init_global_params(config, fed, spec, clients[0].data["image"].shape[1:])
    tx = server_optimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum)
    s = tx.init(p)
    n_max = max(c.num_examples for c in clients)
    key = jax.random.key(config.seed)
    for r, ids in enumerate([[0, 1], [0]]):
        p, s = reference_round(spec, tx, p, s, [clients[i].data for i in ids], [clients[i].labeled for i in ids], ids,
                               jax.random.fold_in(key, r), n_max)
    assert [h["clients"] for h in history] == [[0, 1], [0]]
    assert history[1]["dropped"] == [1] and "client 1" in history[1]["failures"][0]
    assert _max_diff(leaves, jax.tree.leaves(p)) < 2e-5
    assert _max_diff(leaves, jax.tree.leaves(reference[0].params)) > 1e-3  # differs from the full round


# ---------------------------------------------------------------------------- real runtimes


class Deployment:
    """A SuperLink and SuperNodes on 127.0.0.1 as separate processes; always cleaned up."""

    def __init__(self, tmp_path, node_configs):
        self.dir = tmp_path
        self.home = tmp_path / "flwr_home"
        self.port = FR.free_port()
        FR.write_connection(self.home, "loopback", f"127.0.0.1:{self.port}")
        self.procs = [FR.start_superlink(self.home, self.port, tmp_path / "superlink.log")]
        n = len(node_configs)
        for k, extra in enumerate(node_configs):
            self.procs.append(FR.start_supernode(self.home, f"127.0.0.1:{self.port}", k, n, tmp_path / f"supernode{k}.log",
                                                node_config=extra))

    def run(self, fed, timeout=150.0, **settings):
        """``flwr run`` the app; returns (result.json, out dir)."""
        out = self.dir / "out"
        run_toml = FR.write_run_config(self.dir / "run.toml", from_dict(EXP), fed, out, **settings)
        run_id = FR.flwr_run(F.write_app(self.dir / "app"), "loopback", run_toml, self.home)
        return FR.wait_for_result(out, timeout, "loopback", run_id, self.home), out

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.dir.glob("*.log")))

    def close(self):
        FR.stop_process(*self.procs)
        assert all(p.poll() is not None for p in self.procs)


def _children_of(groups, wait=10.0):
    """Live (non-zombie) processes in the process groups ``groups``, after up to ``wait`` s."""
    end = time.monotonic() + wait
    while True:
        ps = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat="], check=False, capture_output=True, text=True)
        rows = [r.split() for r in ps.stdout.split("\n")]
        alive = [r for r in rows if len(r) == 3 and int(r[1]) in groups and not r[2].startswith("Z")]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.5)


def test_loopback_deployment_equals_run_federated(tmp_path, reference):
    t0 = time.perf_counter()
    dep = Deployment(tmp_path, [None, None])
    try:
        result, out = dep.run(fed_config_from_dict(FED))
    except Exception:
        print(dep.logs())
        raise
    finally:
        dep.close()
    assert not _children_of({p.pid for p in dep.procs})  # no SuperExec/ClientApp/ServerApp left behind
    assert result["status"] == "completed" and [c["partition-id"] for c in result["clients"]] == [0, 1]
    _check_equal_to_reference(_saved_leaves(out), result["history"], reference)
    print(f"loopback deployment: {time.perf_counter() - t0:.1f}s; server {result['timing']}, rounds",
          [round(h["round_time_s"], 1) for h in result["history"]])


@pytest.mark.slow
def test_loopback_deployment_survives_a_client_raising_mid_round(tmp_path, reference):
    dep = Deployment(tmp_path, [None, {F.FAIL_IN_ROUND_KEY: 2, F.FAIL_MODE_KEY: "raise"}])
    try:
        result, out = dep.run(fed_config_from_dict(FED), min_train_replies=1)
    finally:
        dep.close()
    assert "InjectedClientFailure" in result["history"][1]["failures"][0]  # Flower's error reply, not a timeout
    _check_survivor_round(_saved_leaves(out), result["history"], reference)


@pytest.mark.slow
def test_loopback_deployment_client_process_death_fails_the_round_with_one_line(tmp_path):
    # the ClientApp process exits without replying; Flower reports it once the task's
    # heartbeat lapses (~60 s), or the round times out first
    dep = Deployment(tmp_path, [None, {F.FAIL_IN_ROUND_KEY: 1}])
    try:
        with pytest.raises(FederatedError) as info:
            dep.run(fed_config_from_dict(FED), timeout=300, round_timeout=240.0)
    finally:
        dep.close()
    msg = str(info.value)
    assert "\n" not in msg and "round 1: 1 of 2 sampled clients replied, 2 needed" in msg and "client 1: " in msg


@pytest.mark.slow
def test_flower_simulation_runtime_equals_run_federated(tmp_path, reference):
    config, fed = _configs()
    rounds = []
    res = FR.run_flower_simulation(config, fed, on_round=lambda r, h: rounds.append(r), timeout=300, workdir=tmp_path)
    assert rounds == [1, 2]
    _check_equal_to_reference(jax.tree.leaves(res.params), res.history, reference)
    assert not list(tmp_path.glob("out/*.tmp"))


@pytest.mark.slow
def test_da_fed_engine_flower_sim_writes_the_same_metrics(tmp_path, reference):
    exp = tmp_path / "fed_tiny.py"
    exp.write_text(f"FED_CONFIG = {FED!r}\n\ndef get_config():\n    return {EXP!r}\n")
    cmd = [sys.executable, "-m", "da_framework.cli", "fed", str(exp), "--results-dir", str(tmp_path / "res"), "--engine", "flower-sim"]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (record_path,) = (tmp_path / "res").rglob("seed3.json")
    assert "_flower-sim" in str(record_path)
    record = json.loads(record_path.read_text())
    assert record["engine"] == "flower-sim"
    assert record["metrics"]["test_accuracy"] == pytest.approx(reference[0].metrics["test_accuracy"], abs=1e-9)
