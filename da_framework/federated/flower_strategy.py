"""The server side of the Flower app: parameters as ArrayRecords, the task and its keys, and
:class:`JaxFedStrategy` (a Flower FedAvg that samples and aggregates as the in-process
simulation does); see :mod:`da_framework.federated.flower`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Flower adapter needs flwr>=1.42: pip install 'da_framework[fed]'") from e

from da_framework.config import ExperimentConfig, from_dict
from da_framework.errors import UserError
from da_framework.federated.algorithms import aggregate, sample_clients, server_optimizer, server_update
from da_framework.federated.config import FedConfig, fed_config_from_dict
from da_framework.federated.simulation import FederatedError

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


