"""The same JAX client update in a real federation, on Flower's Message API (``flwr`` >= 1.42).

The optional extra ``pip install 'da_framework[fed]'`` installs Flower.  The Flower app is
:data:`client_app` (a ``ClientApp`` with ``@query`` and ``@train`` handlers) and
:data:`server_app` (a ``ServerApp`` whose ``@main`` drives :class:`JaxFedStrategy`), both in
this module; the app directory handed to ``flwr run`` holds only a ``pyproject.toml`` that
points at them (``python -m da_framework.federated.flower write-app DIR`` writes it, and
``examples/flower_app/`` is a copy), so ``flwr run`` works from an installed package.

One run, on the simulation runtime or on a deployment (SuperLink + SuperNodes)::

    flower-superlink --insecure --disable-runtime-dependency-installation --host 0.0.0.0 --port 9093
    flower-supernode --insecure --superlink LINK:9093 --node-config 'partition-id=0 num-partitions=2'
    flower-supernode --insecure --superlink LINK:9093 --node-config 'partition-id=1 num-partitions=2'
    flwr run APP_DIR CONNECTION --run-config run.toml

``run.toml`` sets ``task`` (JSON ``{"experiment": {ExperimentConfig keys}, "fed": {FedConfig
keys}}``) and ``out-dir`` (where the ServerApp writes ``global.npz`` and ``result.json``);
see :data:`RUN_CONFIG_DEFAULTS` for the other keys.  SuperNode ``partition-id`` k trains on
client k of the experiment's partition (in a real deployment, the data that node owns; here it
is derived deterministically from the seed) and only parameters travel.  ``da fed EXPERIMENT
--engine flower-sim`` runs the same experiment on Flower's simulation runtime
(:func:`run_flower_simulation`); docs/federated/README.md shows a deployment.

Equivalence with the in-process simulation: the ServerApp first asks every SuperNode for its
``partition-id`` and size (a ``query`` message), then samples the round's clients with the
simulation's :func:`~da_framework.federated.algorithms.sample_clients`; each client runs exactly
:func:`~da_framework.federated.simulation.make_client_update` with the key
``fold_in(split(fold_in(key(seed), round))[0], partition_id)`` and the federation's padded
length N, and :class:`JaxFedStrategy` aggregates with the same
:func:`~da_framework.federated.algorithms.aggregate` / ``server_update`` (FedAvg, FedProx,
FedOpt server optimisers, clipping, noise) over the replies sorted by partition id.  When every
sampled client replies, the global model equals
:func:`~da_framework.federated.runner.run_federated`'s up to float summation order.

Failures: a client whose reply does not arrive within ``round-timeout`` seconds, or arrives
as a Flower error (its ClientApp raised or died), is dropped from the round.  With
``min-train-replies = 0`` (default) every sampled client must reply, else the run stops with
one line naming the round and the failed clients; with ``min-train-replies = m`` the round is
aggregated over the >= m replies that arrived (FedAvg over the survivors, as Flower's own
strategies do).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    import tomli_w
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Flower adapter needs flwr>=1.42: pip install 'da_framework[fed]'") from e

from da_framework.config import ExperimentConfig, from_dict
from da_framework.errors import UserError
from da_framework.federated.algorithms import aggregate, sample_clients, server_optimizer, server_update
from da_framework.federated.config import FedConfig, fed_config_from_dict
from da_framework.federated.simulation import FederatedError, make_client_update, stack_clients

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

#: ``[tool.flwr.app.config]`` of the app: the keys ``--run-config`` may set, with defaults.
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "task": "",  # JSON {"experiment": {...}, "fed": {...}} (required)
    "out-dir": "",  # where the ServerApp writes global.npz and result.json ("" = nowhere)
    "round-timeout": 600.0,  # seconds to wait for a round's replies
    "min-train-replies": 0,  # 0: every sampled client must reply; m: aggregate over >= m replies
    "connect-timeout": 300.0,  # seconds to wait for fed.num_clients SuperNodes to connect
}

#: node_config keys of the fault-injection drill (used by the tests; harmless when unset): when
#: asked to train in 1-based round ``da-fail-in-round``, the ClientApp raises (``da-fail-mode =
#: "raise"``, Flower replies with an error at once) or its process exits hard without replying
#: (``"exit"``, the default: Flower notices when the task's heartbeat lapses, ~60 s).
FAIL_IN_ROUND_KEY = "da-fail-in-round"
FAIL_MODE_KEY = "da-fail-mode"


class InjectedClientFailure(RuntimeError):
    """The ClientApp failure that the fault-injection drill asked for."""

APP_NAME = "da-framework-fed"
APP_PUBLISHER = "da-framework"


def app_pyproject() -> str:
    """The Flower app's ``pyproject.toml`` (``[tool.flwr.app]`` as Flower 1.42's apps write it).

    Its components are this installed module's :data:`server_app` / :data:`client_app`, so the
    app directory needs no other file; dependency installation by Flower is not needed either
    (the SuperLink and SuperNodes run in an environment with ``da_framework[fed]``).
    """
    config_lines = "\n".join(f"{k} = {_toml_value(v)}" for k, v in RUN_CONFIG_DEFAULTS.items())
    return f"""# The Flower app of da_framework's federated engine (written by
# `python -m da_framework.federated.flower write-app DIR`; do not edit by hand).
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "da_framework federated training (FedAvg/FedProx/FedOpt) on Flower's Message API"
license = "Apache-2.0"
# da_framework[fed] itself must be installed on the SuperLink and every SuperNode host (run them
# with runtime dependency installation off, as docs/federated/README.md does)
dependencies = ["flwr[simulation]>=1.42,<2"]

[tool.flwr.app]
publisher = "{APP_PUBLISHER}"

[tool.flwr.app.components]
serverapp = "da_framework.federated.flower:server_app"
clientapp = "da_framework.federated.flower:client_app"

# Run config (flwr run ... --run-config run.toml); see da_framework.federated.flower
[tool.flwr.app.config]
{config_lines}
"""


def _toml_value(v: Any) -> str:
    """One TOML value (strings quoted, numbers as they are)."""
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


def write_app(dest: str | Path) -> Path:
    """Writes the Flower app directory (its ``pyproject.toml``) into ``dest``; returns it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pyproject.toml").write_text(app_pyproject())
    return dest


# --------------------------------------------------------------------------- parameters


def params_to_arrays(params: Any) -> ArrayRecord:
    """A parameter pytree as an ``ArrayRecord`` keyed by the leaves' pytree paths."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return ArrayRecord(array_dict={jax.tree_util.keystr(path): Array(np.asarray(x)) for path, x in leaves})


def arrays_to_params(record: ArrayRecord, template: Any) -> Any:
    """Rebuilds a pytree shaped like ``template`` from :func:`params_to_arrays` output.

    Raises:
      FederatedError: naming the first missing parameter or the first shape mismatch.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if name not in record:
            raise FederatedError(f"the received model has no parameter {name} (it has {len(record)} arrays): client and server must build the same model")
        arr = record[name].numpy()
        if arr.shape != leaf.shape:
            raise FederatedError(f"parameter {name} has shape {arr.shape}, the model expects {leaf.shape}: client and server must build the same model")
        out.append(jnp.asarray(arr, leaf.dtype))
    return jax.tree.unflatten(treedef, out)


# --------------------------------------------------------------------------- task and keys


def task_dict(config: ExperimentConfig, fed: FedConfig) -> dict[str, Any]:
    """``{"experiment": ..., "fed": ...}`` of the two configs (JSON-ready)."""
    return {"experiment": config.to_dict(), "fed": fed.to_dict()}


def parse_task(text: str) -> tuple[ExperimentConfig, FedConfig]:
    """Reads the run config's ``task`` JSON into the two configs.

    Raises:
      UserError: if ``text`` is empty or not a JSON object.
    """
    if not text:
        raise UserError("the Flower run config has no task: pass --run-config with task = '{\"experiment\": {...}, \"fed\": {...}}'")
    try:
        task = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"the Flower run config's task is not JSON ({e.msg} at char {e.pos}): write it as one JSON object") from e
    if not isinstance(task, dict):
        raise UserError("the Flower run config's task must be a JSON object {\"experiment\": {...}, \"fed\": {...}}")
    return from_dict(task.get("experiment", {})), fed_config_from_dict(task.get("fed", {}))


def round_client_key(seed: int, round_index: int, client_id: int) -> jax.Array:
    """Client ``client_id``'s key in 0-based round ``round_index`` (as in the simulation)."""
    k_clients, _ = jax.random.split(jax.random.fold_in(jax.random.key(seed), round_index))
    return jax.random.fold_in(k_clients, client_id)


def _num_classes(fed: FedConfig, data_dir: str | None) -> int:
    from da_framework.data.registry import get_domain

    return get_domain(fed.domains[0], data_dir).num_classes


# --------------------------------------------------------------------------- ClientApp


@dataclasses.dataclass
class _ClientRuntime:
    """One SuperNode's client (its data), local procedure and compiled updates."""

    client: Any
    spec: Any
    template: Any
    updates: dict[int, Any]

    def update_fn(self, max_examples: int) -> Any:
        """The jitted client update for padded length ``max_examples`` (compiled once)."""
        if max_examples not in self.updates:
            self.updates[max_examples] = jax.jit(make_client_update(self.spec, max_examples))
        return self.updates[max_examples]


@functools.lru_cache(maxsize=4)
def _client_runtime(task: str, partition_id: int, num_partitions: int | None) -> _ClientRuntime:
    """Builds (once per process: simulation actors keep it between rounds) client
    ``partition_id`` of ``task``."""
    from da_framework.federated.runner import init_global_params, local_training, make_clients

    config, fed = parse_task(task)
    if num_partitions is not None and num_partitions != fed.num_clients:
        raise UserError(f"this SuperNode has num-partitions={num_partitions} but the task has num_clients={fed.num_clients}: start the SuperNodes with num-partitions={fed.num_clients}")
    clients = make_clients(config, fed)
    if not 0 <= partition_id < len(clients):
        raise UserError(f"partition-id {partition_id} is out of range: the task has {len(clients)} clients (0..{len(clients) - 1})")
    client = clients[partition_id]
    spec = local_training(config, fed, _num_classes(fed, config.data_dir))
    # only the tree structure and shapes are used (the server sends the real parameters), so
    # trace the initialisation abstractly: seconds saved in every ClientApp process
    template = jax.eval_shape(lambda: init_global_params(config, fed.replace(pretrain_steps=0), spec, client.data["image"].shape[1:]))
    return _ClientRuntime(client, spec, template, {})


def _node_partition(context: Context) -> tuple[int, int | None]:
    """``(partition-id, num-partitions)`` of this SuperNode's node_config."""
    if "partition-id" not in context.node_config:
        raise UserError("this SuperNode has no partition-id: start it with --node-config 'partition-id=K num-partitions=N'")
    n = context.node_config.get("num-partitions")
    return int(context.node_config["partition-id"]), None if n is None else int(n)


client_app = ClientApp()


@client_app.query()
def client_describe(msg: Message, context: Context) -> Message:
    """Replies with this node's ``partition-id``, number of examples and client name."""
    pid, n = _node_partition(context)
    rt = _client_runtime(str(context.run_config["task"]), pid, n)
    info = ConfigRecord({"partition-id": pid, "num-examples": rt.client.num_examples, "name": rt.client.name})
    return Message(RecordDict({"info": info}), reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Runs the compiled client update from the received global parameters for the round in
    ``config["server-round"]``; replies with the new parameters, its size and loss."""
    pid, n = _node_partition(context)
    cfg = msg.content["config"]
    server_round = int(cfg["server-round"])
    if int(context.node_config.get(FAIL_IN_ROUND_KEY, 0)) == server_round:  # fault-injection drill
        if str(context.node_config.get(FAIL_MODE_KEY, "exit")) == "raise":
            raise InjectedClientFailure(f"client {pid} failed in round {server_round} (fault-injection drill)")
        os._exit(3)  # die mid-round without replying
    config, _ = parse_task(str(context.run_config["task"]))
    rt = _client_runtime(str(context.run_config["task"]), pid, n)
    n_max = int(cfg["max-examples"])
    data = stack_clients([rt.client.data], [rt.client.labeled], max_examples=n_max)
    one = jax.tree.map(lambda x: jnp.asarray(x[0]), data)
    key = round_client_key(config.seed, server_round - 1, pid)
    params, metrics = rt.update_fn(n_max)(arrays_to_params(msg.content["arrays"], rt.template), one, key)
    reply = RecordDict({
        "arrays": params_to_arrays(params),
        "metrics": MetricRecord({"num-examples": rt.client.num_examples, "partition-id": pid, "loss": float(metrics["loss"])}),
    })
    return Message(reply, reply_to=msg)


# --------------------------------------------------------------------------- strategy


class RoundFailedError(FederatedError):
    """A round got fewer successful replies than the strategy requires."""


class JaxFedStrategy(FedAvg):
    """Flower strategy sampling and aggregating as da_framework's simulation does.

    ``configure_train`` sends the round's clients (:func:`sample_clients` on partition ids)
    the global arrays; ``aggregate_train`` averages the replies, sorted by partition id, with
    :func:`aggregate` (weights, clipping, noise) and steps the server optimiser
    (:func:`server_update`).  Flower's ``Strategy.start`` can drive it; :meth:`run` does the
    same with a 0.2 s reply poll and per-round evaluation and logging.

    Attributes:
      params: the current global parameter pytree.
      history: one dict per aggregated round (as :func:`run_federated`'s history).
    """

    def __init__(
        self, config: ExperimentConfig, fed: FedConfig, initial_params: Any, node_of: dict[int, int],
        max_examples: int, min_train_replies: int = 0, round_timeout: float = 600.0,
    ) -> None:
        super().__init__(fraction_train=fed.clients_per_round / fed.num_clients, fraction_evaluate=0.0,
                         min_train_nodes=fed.clients_per_round, min_available_nodes=fed.num_clients)
        if not 0 <= min_train_replies <= fed.clients_per_round:
            raise UserError(f"min-train-replies must be in [0, {fed.clients_per_round}] (clients_per_round), got {min_train_replies}")
        self.fed, self.seed = fed, config.seed
        self.node_of = dict(node_of)
        self.max_examples = max_examples
        self.min_train_replies = min_train_replies
        self.round_timeout = round_timeout
        self.params = initial_params
        self.tx = server_optimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum, fed.server_b1, fed.server_b2, fed.server_tau)
        self.server_state = self.tx.init(initial_params)
        self.history: list[dict[str, Any]] = []
        self._sampled: dict[int, list[int]] = {}
        self._round_start: dict[int, float] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """One train message per sampled client (``server-round`` and ``max-examples`` in its config)."""
        ids = [int(i) for i in sample_clients(self.seed, server_round - 1, self.fed.num_clients, self.fed.clients_per_round)]
        self._sampled[server_round] = ids
        self._round_start[server_round] = time.monotonic()
        config["server-round"] = server_round
        config["max-examples"] = self.max_examples
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, [self.node_of[i] for i in ids], MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregates the successful replies (at least the required number) into the new global model."""
        valid, errors = self._check_and_log_replies(list(replies), is_train=True)
        sampled = self._sampled.get(server_round, [])
        got = sorted(int(m.content["metrics"]["partition-id"]) for m in valid)
        node_to_pid = {v: k for k, v in self.node_of.items()}
        failures = [f"client {node_to_pid.get(m.metadata.src_node_id, '?')}: {' '.join(m.error.reason.split())}" for m in errors]
        errored = {node_to_pid.get(m.metadata.src_node_id) for m in errors}
        silent = [i for i in sampled if i not in got and i not in errored]
        failures += [f"client {i}: no reply within {self.round_timeout:.0f}s" for i in silent]
        need = self.min_train_replies or len(sampled)
        if len(valid) < max(need, 1):
            raise RoundFailedError(
                f"round {server_round}: {len(valid)} of {len(sampled)} sampled clients replied, {need} needed "
                f"({'; '.join(failures)}); raise round-timeout or set min-train-replies to aggregate over the survivors"
            )
        valid.sort(key=lambda m: int(m.content["metrics"]["partition-id"]))
        client_params = [arrays_to_params(m.content["arrays"], self.params) for m in valid]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *client_params)
        deltas = jax.tree.map(lambda c, g: c - g[None], stacked, self.params)
        counts = jnp.asarray([int(m.content["metrics"]["num-examples"]) for m in valid], jnp.int32)
        _, k_noise = jax.random.split(jax.random.fold_in(jax.random.key(self.seed), server_round - 1))
        delta, am = aggregate(deltas, counts, k_noise, self.fed.clip_norm, self.fed.noise_multiplier)
        self.params, self.server_state = server_update(self.params, self.server_state, delta, self.tx)
        loss = float(np.average([float(m.content["metrics"]["loss"]) for m in valid], weights=np.asarray(counts)))
        metrics = {"client_loss": loss, **{k: float(v) for k, v in am.items()}}
        self.history.append({"round": server_round, **metrics, "round_time_s": time.monotonic() - self._round_start.get(server_round, time.monotonic()), "clients": got,
                             "dropped": [i for i in sampled if i not in got], "failures": failures})
        return params_to_arrays(self.params), MetricRecord(metrics)

    def run(
        self, grid: Grid, num_rounds: int, evaluate_fn: Callable[[int, Any], dict[str, Any] | None] | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        """``num_rounds`` rounds of train/aggregate; returns the final parameters."""
        arrays = params_to_arrays(self.params)
        for r in range(1, num_rounds + 1):
            replies = send_and_receive(grid, self.configure_train(r, arrays, ConfigRecord(), grid), self.round_timeout)
            agg, _ = self.aggregate_train(r, replies)
            arrays = agg if agg is not None else arrays
            if evaluate_fn is not None and (res := evaluate_fn(r, self.params)):
                self.history[-1].update(res)
            if not np.isfinite(self.history[-1]["client_loss"]):
                raise FloatingPointError(f"round {r}: client loss is {self.history[-1]['client_loss']}; lower client_lr")
            if on_round is not None:
                on_round(self.history[-1])
        return self.params


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float, poll: float = 0.2) -> list[Message]:
    """Pushes ``messages`` and pulls their replies until all arrived or ``timeout`` seconds
    passed (``Grid.send_and_receive`` with a short poll instead of its 3 s sleep)."""
    pending = set(grid.push_messages(list(messages)))
    replies: list[Message] = []
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        got = list(grid.pull_messages(list(pending)))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(poll)
    return replies


def connect_clients(grid: Grid, num_clients: int, timeout: float) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
    """Waits for ``num_clients`` SuperNodes and asks each for its partition.

    Returns:
      ``({partition_id: node_id}, {partition_id: {"num-examples", "name"}})``.

    Raises:
      FederatedError: if they do not connect in ``timeout`` seconds, a node fails to answer,
        or the partition ids are not exactly ``0..num_clients-1``.
    """
    end = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > end:
            raise FederatedError(f"only {len(nodes)} of {num_clients} SuperNodes connected within {timeout:.0f}s: start one per client (partition-id 0..{num_clients - 1}) or raise connect-timeout")
        time.sleep(0.2)
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = send_and_receive(grid, msgs, max(end - time.monotonic(), 30.0))
    node_of: dict[int, int] = {}
    info: dict[int, dict[str, Any]] = {}
    for m in replies:
        if m.has_error():
            raise FederatedError(f"SuperNode {m.metadata.src_node_id} could not load its client: {m.error.reason}")
        rec = m.content["info"]
        pid = int(rec["partition-id"])
        if pid in node_of:
            raise FederatedError(f"two SuperNodes ({node_of[pid]}, {m.metadata.src_node_id}) have partition-id {pid}: give each a different one")
        node_of[pid] = m.metadata.src_node_id
        info[pid] = {"num-examples": int(rec["num-examples"]), "name": str(rec["name"])}
    if sorted(node_of) != list(range(num_clients)):
        raise FederatedError(f"the SuperNodes answered with partition ids {sorted(node_of)}; the task needs exactly 0..{num_clients - 1}, one per node")
    return node_of, info


# --------------------------------------------------------------------------- ServerApp


def _write_json(path: Path, obj: Any) -> None:
    """Writes JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Runs the task's ``fed.rounds`` rounds; writes ``global.npz`` (the final parameters, one
    array per leaf in ``jax.tree`` order) and ``result.json`` into ``out-dir``."""
    rc = {**RUN_CONFIG_DEFAULTS, **dict(context.run_config)}
    out = Path(str(rc["out-dir"])) if rc["out-dir"] else None
    result: dict[str, Any] = {"status": "running", "history": []}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "result.json", result)
    try:
        params = run_server(grid, str(rc["task"]), float(rc["round-timeout"]), int(rc["min-train-replies"]),
                            float(rc["connect-timeout"]), result, out)
    except Exception as e:
        result.update(status="failed", error=" ".join(f"{type(e).__name__}: {e}".split()))
        if out is not None:
            _write_json(out / "result.json", result)
        raise
    if out is not None:
        np.savez(out / "global.npz", *[np.asarray(x) for x in jax.tree.leaves(params)])
        result["status"] = "completed"
        _write_json(out / "result.json", result)


def run_server(
    grid: Grid, task: str, round_timeout: float, min_train_replies: int, connect_timeout: float,
    result: dict[str, Any] | None = None, out: Path | None = None,
) -> Any:
    """The ServerApp's body: builds the model as :func:`run_federated` does, connects the
    clients, runs the rounds (evaluating as ``fed.eval_every`` says); returns the parameters.
    ``result["history"]`` grows by one dict per round (and is rewritten in ``out``)."""
    from da_framework.federated.runner import eval_domains, init_global_params, local_training, make_global_eval

    t0 = time.monotonic()
    config, fed = parse_task(task)
    domains = eval_domains(config, fed)
    first = next(iter(domains.values()))
    spec = local_training(config, fed, first.num_classes)
    params = init_global_params(config, fed, spec, first.input_shape)
    run_eval = make_global_eval(config, fed, spec.model, domains)
    t1 = time.monotonic()
    node_of, info = connect_clients(grid, fed.num_clients, connect_timeout)
    max_examples = max(v["num-examples"] for v in info.values())
    result = {} if result is None else result
    result["timing"] = {"setup_s": t1 - t0, "connect_s": time.monotonic() - t1}
    result["clients"] = [{"partition-id": k, **info[k]} for k in sorted(info)]
    strategy = JaxFedStrategy(config, fed, params, node_of, max_examples, min_train_replies, round_timeout)

    def evaluate_fn(r: int, p: Any) -> dict[str, Any] | None:
        return run_eval(p) if (fed.eval_every and r % fed.eval_every == 0) or r == fed.rounds else None

    def on_round(h: dict[str, Any]) -> None:
        result.setdefault("history", []).append(h)
        if out is not None:
            _write_json(out / "result.json", result)

    return strategy.run(grid, fed.rounds, evaluate_fn, on_round)


# --------------------------------------------------------------------------- local runtimes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: str | Path, **extra: str) -> dict[str, str]:
    """The environment for Flower processes: ``FLWR_HOME`` (its config and installed apps),
    telemetry and update checks off, JAX on CPU unless set, and a JAX compilation cache in
    ``FLWR_HOME/jax_cache`` unless set (each ClientApp is a new process; from the second
    round on it loads the compiled client update instead of compiling it)."""
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(flwr_home) / "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    env.update(extra)
    return env


def write_connection(flwr_home: str | Path, name: str, address: str) -> Path:
    """Writes ``FLWR_HOME/config.toml`` with one insecure SuperLink connection ``name``."""
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: {"address": address, "insecure": True}}}))
    return path


def write_run_config(path: str | Path, config: ExperimentConfig, fed: FedConfig, out_dir: str | Path, **settings: Any) -> Path:
    """Writes the ``--run-config`` TOML of a run (``task``, ``out-dir`` and any of
    :data:`RUN_CONFIG_DEFAULTS`' other keys, given with ``_`` for ``-``)."""
    values: dict[str, Any] = {"task": json.dumps(task_dict(config, fed)), "out-dir": str(out_dir)}
    for k, v in settings.items():
        key = k.replace("_", "-")
        if key not in RUN_CONFIG_DEFAULTS:
            raise UserError(f"unknown Flower run-config key {key!r}; keys: {', '.join(RUN_CONFIG_DEFAULTS)}")
        values[key] = type(RUN_CONFIG_DEFAULTS[key])(v)
    Path(path).write_text(tomli_w.dumps(values))
    return Path(path)


def _bin(name: str) -> str:
    """The Flower executable ``name`` beside this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _wait_http(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Waits until the SuperLink on ``port`` answers ``/health``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise FederatedError(f"flower-superlink exited with code {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise FederatedError(f"flower-superlink did not answer on 127.0.0.1:{port} within {timeout:.0f}s: {_tail(log)}")


def _tail(path: Path, n: int = 600) -> str:
    """The last ``n`` characters of a log, on one line."""
    try:
        return " ".join(path.read_text(errors="replace")[-n:].split())
    except OSError:
        return f"(no log at {path})"


def start_superlink(flwr_home: str | Path, port: int, log: str | Path, simulation: bool = False) -> subprocess.Popen:
    """Starts ``flower-superlink --insecure`` on 127.0.0.1:``port`` in its own process group
    (stop it with :func:`stop_process`) and waits until it answers."""
    cmd = [_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
           "--host", "127.0.0.1", "--port", str(port)]
    if simulation:
        cmd.append("--simulation")
    log = Path(log)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=flower_env(flwr_home), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(port, proc, 60.0, log)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def start_supernode(
    flwr_home: str | Path, superlink: str, partition_id: int, num_partitions: int, log: str | Path,
    runtime_port: int | None = None, node_config: dict[str, Any] | None = None,
) -> subprocess.Popen:
    """Starts ``flower-supernode --insecure`` for client ``partition_id`` (own process group)."""
    cfg = {"partition-id": partition_id, "num-partitions": num_partitions, **(node_config or {})}
    cmd = [_bin("flower-supernode"), "--insecure", "--superlink", superlink,
           "--node-config", " ".join(f"{k}={_toml_value(v)}" for k, v in cfg.items()),
           "--port", str(runtime_port or free_port())]
    with Path(log).open("w") as f:
        return subprocess.Popen(cmd, env=flower_env(flwr_home), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(*procs: subprocess.Popen, grace: float = 5.0) -> None:
    """Stops processes started here with their process groups: SIGTERM to all, up to
    ``grace`` seconds for them to exit, then SIGKILL to whatever is left in the groups."""
    def signal_group(p: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    for p in procs:
        if p.poll() is None:
            signal_group(p, signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:  # children (SuperExec, ServerApp/ClientApp processes) share the group
        signal_group(p, signal.SIGKILL)
    for p in procs:
        if p.poll() is None:
            p.wait(timeout=grace)


def flwr_run(
    app_dir: str | Path, connection: str, run_config: str | Path, flwr_home: str | Path,
    federation_config: dict[str, Any] | None = None, timeout: float = 120.0,
) -> int:
    """``flwr run APP_DIR CONNECTION --run-config RUN_CONFIG``; returns the run id."""
    cmd = [_bin("flwr"), "run", str(app_dir), connection, "--run-config", str(run_config), "--format", "json"]
    if federation_config:
        cmd += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
    p = subprocess.run(cmd, env=flower_env(flwr_home), capture_output=True, text=True, timeout=timeout, check=False)
    try:
        payload = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError:
        payload = {}
    if p.returncode != 0 or not payload.get("success"):
        raise FederatedError(f"flwr run failed (exit {p.returncode}): {' '.join((p.stdout + p.stderr).split())[-600:]}")
    return int(payload["run-id"])


def run_status(connection: str, run_id: int, flwr_home: str | Path) -> tuple[str, str]:
    """``(status, details)`` of a run from ``flwr ls`` (e.g. ``("finished:failed", "...")``)."""
    cmd = [_bin("flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"]
    p = subprocess.run(cmd, check=False,
                       env=flower_env(flwr_home), capture_output=True, text=True, timeout=60)
    try:
        runs = json.loads(p.stdout[p.stdout.index("{"):]).get("runs", [])
    except ValueError:
        return "unknown", " ".join((p.stdout + p.stderr).split())[-300:]
    return (str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))) if runs else ("unknown", "")


def run_log(connection: str, run_id: int, flwr_home: str | Path) -> str:
    """The run's logs so far (``flwr log RUN_ID CONNECTION --show``)."""
    cmd = [_bin("flwr"), "log", str(run_id), connection, "--show"]
    p = subprocess.run(cmd, check=False, env=flower_env(flwr_home),
                       capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def wait_for_result(
    out_dir: str | Path, timeout: float, connection: str | None = None, run_id: int | None = None,
    flwr_home: str | Path | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Waits for the ServerApp's ``result.json`` to say completed (returns it) or failed
    (raises :class:`FederatedError` with its one-line error); ``on_round`` sees each new round.
    With ``connection``/``run_id``, a run that Flower reports finished without a result
    (the ServerApp could not even start) fails at once with Flower's details."""
    path = Path(out_dir) / "result.json"
    end = time.monotonic() + timeout
    seen, last_check = 0, time.monotonic()
    while time.monotonic() < end:
        res: dict[str, Any] = {}
        if path.exists():
            try:
                res = json.loads(path.read_text())
            except (OSError, ValueError):
                res = {}
        for h in res.get("history", [])[seen:]:
            if on_round is not None:
                on_round(h)
            seen += 1
        if res.get("status") == "completed":
            return res
        if res.get("status") == "failed":
            raise FederatedError(f"the Flower run failed: {res.get('error', 'no error recorded')}")
        if connection and run_id is not None and time.monotonic() - last_check > 30:
            last_check = time.monotonic()
            status, details = run_status(connection, run_id, flwr_home or "")
            if status.startswith("finished") and not path.exists():
                raise FederatedError(f"Flower run {run_id} ended ({status}) without a result: {details}")
        time.sleep(0.25)
    raise FederatedError(f"the Flower run did not finish within {timeout:.0f}s (see {out_dir})")


@contextmanager
def _workdir(keep: str | Path | None) -> Iterator[Path]:
    """``keep`` (created) or a temporary directory removed afterwards."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    d = tempfile.mkdtemp(prefix="da_flower_")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_flower_simulation(
    config: ExperimentConfig, fed: FedConfig, on_round: Callable[[int, dict[str, Any]], None] | None = None,
    timeout: float = 3600.0, workdir: str | Path | None = None, num_cpus_per_client: int = 1,
) -> Any:
    """Runs the experiment with ``flwr run`` on Flower's simulation runtime (a local
    ``flower-superlink --simulation``, Ray backend, ``fed.num_clients`` virtual SuperNodes);
    returns a :class:`~da_framework.federated.runner.FedResult` like :func:`run_federated`'s.
    The SuperLink and everything it started are stopped before returning."""
    from da_framework.federated.runner import FedResult, make_clients

    start = time.perf_counter()
    clients = make_clients(config, fed)  # validates the partition and names the clients for the record
    with _workdir(workdir) as wd:
        home, out = wd / "flwr_home", wd / "out"
        shutil.rmtree(out, ignore_errors=True)
        port = free_port()
        write_connection(home, "da-sim", f"127.0.0.1:{port}")
        app = write_app(wd / "app")
        run_toml = write_run_config(wd / "run.toml", config, fed, out)
        link = start_superlink(home, port, wd / "superlink.log", simulation=True)
        try:
            run_id = flwr_run(app, "da-sim", run_toml, home, {
                "num-supernodes": fed.num_clients, "client-resources-num-cpus": int(num_cpus_per_client), "client-resources-num-gpus": 0.0,
            })
            res = wait_for_result(out, timeout, "da-sim", run_id, home,
                                  None if on_round is None else (lambda h: on_round(int(h["round"]), h)))
            saved = out / "global.npz"
            history = res["history"]
            if workdir is not None:  # kept for inspection
                (wd / "run.log").write_text(run_log("da-sim", run_id, home))
        finally:
            stop_process(link)
        from da_framework.federated.runner import init_global_params, local_training

        spec = local_training(config, fed, _num_classes(fed, config.data_dir))
        template = jax.eval_shape(lambda: init_global_params(config, fed.replace(pretrain_steps=0), spec, clients[0].data["image"].shape[1:]))
        params = load_global(saved, template)
    final = {k: v for k, v in history[-1].items() if k.startswith(("test_accuracy", "target_test"))}
    return FedResult(final, history, params, clients, time.perf_counter() - start)


def load_global(path: str | Path, template: Any) -> Any:
    """The parameters a ServerApp saved in ``global.npz``, shaped like ``template``."""
    npz = np.load(path)
    leaves, treedef = jax.tree.flatten(template)
    if len(npz.files) != len(leaves):
        raise FederatedError(f"{path} holds {len(npz.files)} arrays but the model has {len(leaves)}: it was saved for another model")
    return jax.tree.unflatten(treedef, [np.asarray(npz[f"arr_{i}"]) for i in range(len(leaves))])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m da_framework.federated.flower {write-app,run-config} ...``."""
    parser = argparse.ArgumentParser(description="da_framework Flower app helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-app", help="write the Flower app directory (its pyproject.toml)")
    w.add_argument("dest")
    rc = sub.add_parser("run-config", help="write a --run-config TOML for an experiment")
    rc.add_argument("experiment", help="experiment name (experiments/<name>.py) or path")
    rc.add_argument("--out-dir", required=True, help="where the ServerApp writes global.npz and result.json")
    rc.add_argument("--dest", default="run.toml")
    rc.add_argument("--set", action="append", default=[], help="override an experiment or federated key: key=value")
    rc.add_argument("--min-train-replies", type=int, default=0)
    rc.add_argument("--round-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.cmd == "write-app":
        print(write_app(args.dest) / "pyproject.toml")
        return
    from da_framework.errors import user_errors
    from da_framework.federated.command import _split_overrides, load_fed_experiment

    try:
        config, fed = load_fed_experiment(args.experiment)
        exp_over, fed_over = _split_overrides(args.set)
        config, fed = config.replace(**exp_over), fed.replace(**fed_over)
        path = write_run_config(args.dest, config, fed, args.out_dir, min_train_replies=args.min_train_replies,
                                round_timeout=args.round_timeout)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path)


if __name__ == "__main__":
    main()
