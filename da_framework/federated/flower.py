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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    import tomli_w
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Flower adapter needs flwr>=1.42: pip install 'da_framework[fed]'") from e

from da_framework.errors import UserError
from da_framework.federated.simulation import make_client_update, stack_clients

from da_framework.federated.flower_strategy import (  # noqa: E402
    JaxFedStrategy, _num_classes, arrays_to_params, connect_clients, params_to_arrays, parse_task, round_client_key,
)
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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m da_framework.federated.flower {write-app,run-config} ...``."""
    parser = argparse.ArgumentParser(description="da_framework Flower app helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-app", help="write the Flower app directory (its pyproject.toml)")
    w.add_argument("dest")
    rc = sub.add_parser("run-config", help="write a --run-config TOML for an experiment")
    rc.add_argument("experiment", help="experiment or project name (experiments/<name>.py, projects/<name>.py) or path")
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
    from da_framework.federated.flower_runtime import write_run_config

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

