"""Running the same JAX client update in a real federation with Flower (``flwr``).

The optional extra ``pip install 'da_framework[fed]'`` installs Flower.  This adapter uses
Flower's long-standing gRPC API (``flwr.server.start_server`` / ``flwr.client.start_client``
with a ``NumPyClient``; deprecated by Flower since 1.13 in favour of SuperLink/SuperNode
but still shipped), so a server and every client are separate OS processes:

    python -m da_framework.federated.flower server --task task.json --address 127.0.0.1:8080 --out global.npz
    python -m da_framework.federated.flower client --task task.json --address 127.0.0.1:8080 --client-id 0
    python -m da_framework.federated.flower client --task task.json --address 127.0.0.1:8080 --client-id 1

``task.json`` is ``{"experiment": {ExperimentConfig keys}, "fed": {FedConfig keys}}``.
Every process builds the same model; client k trains on client k of the experiment's
partition (in a real deployment this is the data the client owns; the simulation derives
it deterministically from the seed).  Only parameters travel over gRPC.

Equivalence with the in-process simulation: the client runs exactly
:func:`~da_framework.federated.simulation.make_client_update` with the key
``fold_in(split(fold_in(key(seed), round))[0], client_id)`` and padded length N sent by the
server, and :class:`JaxFedOptStrategy` aggregates with the same
:func:`~da_framework.federated.algorithms.aggregate` / ``server_update`` (FedAvg, FedProx,
FedOpt server optimisers, clipping, noise), with the results sorted by client id.  With all
clients taking part every round, the global model equals
:func:`~da_framework.federated.runner.run_federated`'s up to float summation order.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    import flwr as fl
    from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Flower adapter needs flwr: pip install 'da_framework[fed]' (or pip install flwr)") from e

from da_framework.config import ExperimentConfig, from_dict
from da_framework.errors import UserError
from da_framework.federated.algorithms import aggregate, server_optimizer, server_update
from da_framework.federated.config import FedConfig, fed_config_from_dict
from da_framework.federated.runner import init_global_params, local_training, make_clients
from da_framework.federated.simulation import make_client_update, stack_clients

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def params_to_ndarrays(params: Any) -> list[np.ndarray]:
    """The leaves of a parameter pytree, in ``jax.tree`` order, as NumPy arrays."""
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def ndarrays_to_params(arrays: Sequence[np.ndarray], template: Any) -> Any:
    """Rebuilds a pytree shaped like ``template`` from :func:`params_to_ndarrays` output."""
    leaves, treedef = jax.tree.flatten(template)
    if len(arrays) != len(leaves):
        raise UserError(f"got {len(arrays)} arrays for a model with {len(leaves)} parameter arrays")
    return jax.tree.unflatten(treedef, [jnp.asarray(a, l.dtype).reshape(l.shape) for a, l in zip(arrays, leaves)])


def load_task(path: str | Path) -> tuple[ExperimentConfig, FedConfig]:
    """Reads ``{"experiment": {...}, "fed": {...}}`` into the two configs."""
    task = json.loads(Path(path).read_text())
    return from_dict(task.get("experiment", {})), fed_config_from_dict(task.get("fed", {}))


def round_client_key(seed: int, round_index: int, client_id: int) -> jax.Array:
    """Client ``client_id``'s key in 0-based round ``round_index`` (as in the simulation)."""
    k_clients, _ = jax.random.split(jax.random.fold_in(jax.random.key(seed), round_index))
    return jax.random.fold_in(k_clients, client_id)


class JaxNumPyClient(fl.client.NumPyClient):
    """A Flower client whose ``fit`` is the simulation's jitted client update."""

    def __init__(self, config: ExperimentConfig, fed: FedConfig, client_id: int) -> None:
        clients = make_clients(config, fed)
        if not 0 <= client_id < len(clients):
            raise UserError(f"client id {client_id} out of range: the task has {len(clients)} clients")
        self.client = clients[client_id]
        self.client_id = client_id
        self.seed = config.seed
        self.spec = local_training(config, fed, _num_classes(fed))
        # only the tree structure and shapes are used: the server sends the real parameters
        self.template = init_global_params(config, fed.replace(pretrain_steps=0), self.spec, self.client.data["image"].shape[1:])
        self._updates: dict[int, Any] = {}

    def _update_fn(self, max_examples: int) -> Any:
        if max_examples not in self._updates:
            self._updates[max_examples] = jax.jit(make_client_update(self.spec, max_examples))
        return self._updates[max_examples]

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        """Not used: the server sends the initial parameters."""
        return params_to_ndarrays(self.template)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        """Runs the local update from the global parameters for server round ``config["round"]``."""
        n_max = int(config.get("max_examples", self.client.num_examples))
        data = stack_clients([self.client.data], [self.client.labeled], max_examples=n_max)
        one = jax.tree.map(lambda x: jnp.asarray(x[0]), data)
        key = round_client_key(self.seed, int(config["round"]) - 1, self.client_id)
        params, metrics = self._update_fn(n_max)(ndarrays_to_params(parameters, self.template), one, key)
        return params_to_ndarrays(params), self.client.num_examples, {"client_id": self.client_id, "loss": float(metrics["loss"])}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        """Not used (evaluation is centralised)."""
        return 0.0, self.client.num_examples, {}


def _num_classes(fed: FedConfig) -> int:
    from da_framework.data.registry import get_domain

    return get_domain(fed.domains[0]).num_classes


class JaxFedOptStrategy(fl.server.strategy.FedAvg):
    """Flower strategy aggregating with da_framework's FedAvg/FedOpt/DP code.

    Attributes:
      params: the current global parameter pytree (read it after the run).
    """

    def __init__(self, config: ExperimentConfig, fed: FedConfig, initial_params: Any, max_examples: int) -> None:
        super().__init__(
            fraction_fit=fed.clients_per_round / fed.num_clients, fraction_evaluate=0.0,
            min_fit_clients=fed.clients_per_round, min_available_clients=fed.num_clients, min_evaluate_clients=0,
            initial_parameters=ndarrays_to_parameters(params_to_ndarrays(initial_params)),
            on_fit_config_fn=lambda r: {"round": r, "max_examples": max_examples},
        )
        self.fed = fed
        self.seed = config.seed
        self.params = initial_params
        self.tx = server_optimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum, fed.server_b1, fed.server_b2, fed.server_tau)
        self.server_state = self.tx.init(initial_params)
        self.history: list[dict[str, float]] = []

    def aggregate_fit(
        self, server_round: int, results: list[tuple[Any, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Averages the client updates (sorted by client id) and steps the server optimiser."""
        if failures or not results:
            raise RuntimeError(f"round {server_round}: {len(failures)} client(s) failed, {len(results)} succeeded")
        results = sorted(results, key=lambda r: int(r[1].metrics["client_id"]))
        client_params = [ndarrays_to_params(parameters_to_ndarrays(r.parameters), self.params) for _, r in results]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *client_params)
        deltas = jax.tree.map(lambda c, g: c - g[None], stacked, self.params)
        counts = jnp.asarray([r.num_examples for _, r in results], jnp.int32)
        _, k_noise = jax.random.split(jax.random.fold_in(jax.random.key(self.seed), server_round - 1))
        delta, _ = aggregate(deltas, counts, k_noise, self.fed.clip_norm, self.fed.noise_multiplier)
        self.params, self.server_state = server_update(self.params, self.server_state, delta, self.tx)
        loss = float(np.average([r.metrics["loss"] for _, r in results], weights=np.asarray(counts)))
        self.history.append({"round": server_round, "client_loss": loss})
        return ndarrays_to_parameters(params_to_ndarrays(self.params)), {"client_loss": loss}


def run_server(task: str | Path, address: str, out: str | Path | None = None) -> Any:
    """Starts the Flower server for ``fed.rounds`` rounds; writes the final global model to
    ``out`` (``.npz`` of the parameter leaves) and returns it."""
    config, fed = load_task(task)
    clients = make_clients(config, fed)
    spec = local_training(config, fed, _num_classes(fed))
    params = init_global_params(config, fed, spec, clients[0].data["image"].shape[1:])
    strategy = JaxFedOptStrategy(config, fed, params, max(c.num_examples for c in clients))
    fl.server.start_server(server_address=address, config=fl.server.ServerConfig(num_rounds=fed.rounds), strategy=strategy)
    if out is not None:
        np.savez(out, *params_to_ndarrays(strategy.params))
    return strategy.params


def run_client(task: str | Path, address: str, client_id: int) -> None:
    """Starts Flower client ``client_id`` and serves until the server finishes."""
    config, fed = load_task(task)
    client = JaxNumPyClient(config, fed, client_id)
    fl.client.start_client(server_address=address, client=client.to_client(), insecure=True, max_retries=60, max_wait_time=120.0)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m da_framework.federated.flower {server,client} ...``."""
    parser = argparse.ArgumentParser(description="da_framework Flower adapter")
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--task", required=True)
    s.add_argument("--address", default="127.0.0.1:8080")
    s.add_argument("--out")
    c = sub.add_parser("client")
    c.add_argument("--task", required=True)
    c.add_argument("--address", default="127.0.0.1:8080")
    c.add_argument("--client-id", type=int, required=True)
    args = parser.parse_args(argv)
    if args.role == "server":
        run_server(args.task, args.address, args.out)
    else:
        run_client(args.task, args.address, args.client_id)


if __name__ == "__main__":
    main()
