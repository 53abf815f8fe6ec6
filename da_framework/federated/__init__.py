"""Federated learning: FedAvg/FedProx/FedOpt simulated in one compiled program per round,
federated transfer and domain adaptation, and a Flower adapter (``da_framework.federated.flower``,
optional extra ``fed``) for real multi-process deployments."""

from da_framework.federated.algorithms import aggregate, clip_updates, proximal_term, server_optimizer, server_update, weighted_average
from da_framework.federated.config import FedConfig, fed_config_from_dict
from da_framework.federated.partition import (
    Client,
    dirichlet_label_partition,
    domain_clients,
    iid_partition,
    partition_clients,
    partition_table,
    quantity_skew_partition,
)
from da_framework.federated.runner import FedResult, run_federated
from da_framework.federated.simulation import ClientData, LocalTraining, make_client_update, make_round_fn, stack_clients

__all__ = [
    "Client",
    "ClientData",
    "FedConfig",
    "FedResult",
    "LocalTraining",
    "aggregate",
    "clip_updates",
    "dirichlet_label_partition",
    "domain_clients",
    "fed_config_from_dict",
    "iid_partition",
    "make_client_update",
    "make_round_fn",
    "partition_clients",
    "partition_table",
    "proximal_term",
    "quantity_skew_partition",
    "run_federated",
    "server_optimizer",
    "server_update",
    "stack_clients",
    "weighted_average",
]
