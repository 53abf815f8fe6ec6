"""The federated training loop: configs in, per-round metrics and a global model out.

``run_federated(experiment_config, fed_config)`` builds the clients (partition), the model
(``make_model``), the global parameters (random, or source-pretrained), the server
optimiser, compiles one round, runs ``rounds`` rounds and evaluates the global model on the
test split of every client domain.  Randomness: ``jax.random.key(seed)`` and NumPy
generators seeded by ``seed``, so a run is reproducible from its two configs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from da_framework.config import ExperimentConfig
from da_framework.data.registry import get_domain
from da_framework.federated.adaptation import adaptation_method, pretrain_on_source
from da_framework.federated.algorithms import sample_clients, server_optimizer
from da_framework.federated.config import FedConfig
from da_framework.federated.partition import Client, domain_clients, partition_clients
from da_framework.federated.simulation import (
    FederatedError,
    LocalTraining,
    make_client_mesh,
    make_round_fn,
    padded_client_ids,
    place_clients,
    replicate_tree,
    stack_clients,
)
from da_framework.models.registry import make_model
from da_framework.train.evaluate import evaluate, make_predict_fn

RoundLog = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass
class FedResult:
    """What :func:`run_federated` returns.

    Attributes:
      metrics: final evaluation of the global model.
      history: one dict per round (client loss, update norms, and evaluations).
      params: the final global parameters.
      clients: the clients (with their data) of the federation.
      wall_time_s: seconds of the whole run.
    """

    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    params: Any
    clients: list[Client]
    wall_time_s: float


def make_clients(config: ExperimentConfig, fed: FedConfig) -> list[Client]:
    """The federation's clients as named by ``fed.partition``."""
    if fed.partition == "domain":
        return domain_clients(fed.domains, fed.num_clients, config.seed, fed.target_domains, data_dir=config.data_dir)
    return partition_clients(fed.partition, fed.domains[0], fed.num_clients, config.seed, fed.dirichlet_alpha, data_dir=config.data_dir)


def local_training(config: ExperimentConfig, fed: FedConfig, num_classes: int) -> LocalTraining:
    """The clients' local procedure from the configs."""
    model = make_model(config.model, num_classes, config.bottleneck_dim, config.bottleneck_norm, **dict(config.model_kwargs))
    return LocalTraining(
        model=model, batch_size=fed.local_batch_size, local_epochs=fed.local_epochs, client_lr=fed.client_lr,
        mu=fed.mu, adaptation=adaptation_method(fed.adaptation),
    )


def init_global_params(config: ExperimentConfig, fed: FedConfig, spec: LocalTraining, input_shape: tuple[int, ...]) -> Any:
    """Random initial parameters (seeded), or source-pretrained ones if ``fed.pretrain_steps``."""
    if fed.pretrain_steps:
        return pretrain_on_source(config, fed.pretrain_steps)
    variables = spec.model.init(jax.random.key(config.seed), jnp.zeros((1, *input_shape), jnp.float32))
    extra = [k for k in variables if k != "params"]
    if extra:
        raise FederatedError(
            f"model {config.model!r} has mutable collections {extra} (e.g. BatchNorm); the federated engine "
            "averages parameters only: use a model without them (lenet, mlp)"
        )
    return variables["params"]


def eval_domains(config: ExperimentConfig, fed: FedConfig) -> dict[str, Any]:
    """The domains the global model is evaluated on: every client domain, then the targets."""
    return {name: get_domain(name, config.data_dir) for name in (*fed.domains, *fed.target_domains)}


def make_global_eval(config: ExperimentConfig, fed: FedConfig, model: Any, domains: dict[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """``evaluate(params) -> metrics``: test accuracy of the global model on each of
    ``domains``, their mean, and the mean over ``fed.target_domains`` (if any)."""
    predict = make_predict_fn(model)

    def run_eval(p: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, dom in domains.items():
            out[f"test_accuracy/{name}"] = evaluate(predict, {"params": p}, dom.split("test"), dom.num_classes, config.eval_batch_size, dom.input_key)["accuracy"]
        out["test_accuracy"] = float(np.mean([out[f"test_accuracy/{n}"] for n in domains]))
        if fed.target_domains:
            out["target_test_accuracy"] = float(np.mean([out[f"test_accuracy/{n}"] for n in fed.target_domains]))
        return out

    return run_eval


def run_federated(config: ExperimentConfig, fed: FedConfig, on_round: RoundLog | None = None) -> FedResult:
    """Runs ``fed.rounds`` rounds of federated training and evaluates the global model."""
    start = time.perf_counter()
    clients = make_clients(config, fed)
    domains = eval_domains(config, fed)
    first = next(iter(domains.values()))
    spec = local_training(config, fed, first.num_classes)
    params = init_global_params(config, fed, spec, first.input_shape)
    tx = server_optimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum, fed.server_b1, fed.server_b2, fed.server_tau)
    server_state = tx.init(params)
    max_examples = max(c.num_examples for c in clients)
    round_fn = make_round_fn(spec, tx, max_examples, fed.clip_norm, fed.noise_multiplier, fed.client_chunk,
                             fed.client_execution, tuple(first.input_shape))
    mesh = make_client_mesh(fed.num_devices) if fed.num_devices > 1 else None
    params, server_state = replicate_tree(params, mesh), replicate_tree(server_state, mesh)
    run_eval = make_global_eval(config, fed, spec.model, domains)
    key = jax.random.key(config.seed)

    history: list[dict[str, Any]] = []
    for r in range(fed.rounds):
        ids = sample_clients(config.seed, r, len(clients), fed.clients_per_round)
        chosen = [clients[i] for i in ids]
        stacked = stack_clients([c.data for c in chosen], [c.labeled for c in chosen], max_examples, pad_clients_to=fed.num_devices)
        data, cids = place_clients(stacked, padded_client_ids(ids, stacked.num_clients, len(clients)), mesh)
        params, server_state, metrics = round_fn(params, server_state, data, cids, jax.random.fold_in(key, r))
        logged: dict[str, Any] = {"round": r + 1, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
        if not np.isfinite(logged["client_loss"]):
            raise FloatingPointError(f"round {r + 1}: client loss is {logged['client_loss']}; lower client_lr")
        if (fed.eval_every and (r + 1) % fed.eval_every == 0) or r + 1 == fed.rounds:
            logged.update(run_eval(params))
        history.append(logged)
        if on_round is not None:
            on_round(r + 1, logged)
    final = {k: v for k, v in history[-1].items() if k.startswith(("test_accuracy", "target_test"))}
    return FedResult(final, history, jax.device_get(params), clients, time.perf_counter() - start)
