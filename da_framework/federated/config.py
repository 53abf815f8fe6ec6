"""Federated settings: one frozen, validated dataclass next to :class:`ExperimentConfig`.

An experiment file for ``da fed`` defines ``get_config()`` (model, domains, seed: the usual
:class:`~da_framework.config.ExperimentConfig` keys) and a ``FED_CONFIG`` dict with any
subset of :class:`FedConfig`'s fields.  Unknown keys are an error listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from da_framework.config import ConfigError

ALGORITHMS = ("fedavg", "fedprox")
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi")
PARTITIONS = ("iid", "dirichlet", "quantity", "domain")
CLIENT_EXECUTIONS = ("auto", "vmap", "scan", "chunk")  # da_framework.federated.execution.STRATEGIES


@dataclasses.dataclass(frozen=True)
class FedConfig:
    """Everything federated about a run (the model and seed live in ExperimentConfig).

    Attributes:
      algorithm: ``"fedavg"`` (McMahan et al. 2017) or ``"fedprox"`` (Li et al. 2020).
      prox_mu: FedProx proximal weight mu (used when ``algorithm == "fedprox"``).
      rounds: communication rounds.
      num_clients: clients in the federation (for ``partition="domain"`` they are dealt
        round-robin over ``domains + target_domains``).
      clients_per_round: clients sampled uniformly without replacement each round.
      local_epochs: passes of each sampled client over its own data per round.
      local_batch_size: client minibatch size B.
      client_lr: client SGD learning rate.
      server_optimizer: ``"sgd"`` (FedAvg when ``server_lr == 1``), ``"momentum"``
        (FedAvgM), ``"adam"`` (FedAdam) or ``"yogi"`` (FedYogi); Reddi et al. 2021.
      server_lr: server learning rate.
      server_momentum: momentum of ``"momentum"``.
      server_b1, server_b2: moment decays of FedAdam / FedYogi.
      server_tau: adaptivity epsilon tau of FedAdam / FedYogi.
      clip_norm: per-client update L2 clipping bound (None: no clipping).
      noise_multiplier: Gaussian noise std as a multiple of ``clip_norm`` on the sum of
        clipped updates (DP-FedAvg, McMahan et al. 2018); needs ``clip_norm``.
      partition: ``"iid"``, ``"dirichlet"`` (label skew), ``"quantity"`` (size skew) or
        ``"domain"`` (each client holds one domain of ``domains``).
      dirichlet_alpha: concentration of the label-skew / quantity-skew Dirichlet.
      domains: domain names for ``partition="domain"`` (labelled clients).
      target_domains: domains of unlabelled clients (federated domain adaptation).
      adaptation: method spec of the per-client adaptation loss added on every client's own
        batch, e.g. ``"0.1*entropy"`` (None: supervised only).
      pretrain_steps: centralised source pre-training steps before federated fine-tuning
        (federated transfer; 0: start from random initialisation).
      eval_every: evaluate the global model every this many rounds (0: only at the end).
      num_devices: devices the client axis is sharded over.
      client_execution: how the compiled round runs its clients: ``"auto"`` (default:
        ``"scan"`` on CPU, ``"vmap"`` on accelerators), ``"vmap"`` (all
        at once), ``"scan"`` (one after another, each for its own number of steps) or
        ``"chunk"`` (``client_chunk`` vmapped clients at a time); see
        :mod:`da_framework.federated.execution`.  Same results, different speed.
      client_chunk: clients per chunk for ``client_execution="chunk"`` (with ``"auto"``,
        setting it selects ``"chunk"``).
    """

    algorithm: str = "fedavg"
    prox_mu: float = 0.01
    rounds: int = 20
    num_clients: int = 10
    clients_per_round: int = 10
    local_epochs: int = 1
    local_batch_size: int = 16
    client_lr: float = 0.05
    server_optimizer: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    server_b1: float = 0.9
    server_b2: float = 0.99
    server_tau: float = 1e-3
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    domains: tuple[str, ...] = ("digits/source",)
    target_domains: tuple[str, ...] = ()
    adaptation: str | None = None
    pretrain_steps: int = 0
    eval_every: int = 1
    num_devices: int = 1
    client_execution: str = "auto"
    client_chunk: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "target_domains", tuple(self.target_domains))
        checks = {
            "rounds": self.rounds > 0,
            "num_clients": self.num_clients > 0,
            "clients_per_round": 0 < self.clients_per_round <= self.num_clients,
            "local_epochs": self.local_epochs > 0,
            "local_batch_size": self.local_batch_size > 0,
            "client_lr": self.client_lr > 0,
            "server_lr": self.server_lr > 0,
            "prox_mu": self.prox_mu >= 0,
            "noise_multiplier": self.noise_multiplier >= 0,
            "dirichlet_alpha": self.dirichlet_alpha > 0,
            "pretrain_steps": self.pretrain_steps >= 0,
            "eval_every": self.eval_every >= 0,
            "num_devices": self.num_devices > 0,
            "domains": len(self.domains) > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"federated config key {key!r} has invalid value {getattr(self, key)!r}")
        for key, value, valid in (
            ("algorithm", self.algorithm, ALGORITHMS),
            ("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS),
            ("partition", self.partition, PARTITIONS),
            ("client_execution", self.client_execution, CLIENT_EXECUTIONS),
        ):
            if value not in valid:
                raise ConfigError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
        if self.client_chunk is not None and self.client_chunk <= 0:
            raise ConfigError(f"client_chunk must be a positive int or None, got {self.client_chunk!r}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"clip_norm must be positive or None, got {self.clip_norm!r}")
        if self.partition == "domain" and self.num_clients < len(self.domains) + len(self.target_domains):
            raise ConfigError("partition='domain' needs num_clients >= number of domains (one client per domain at least)")
        if self.target_domains and self.partition != "domain":
            raise ConfigError("target_domains (unlabelled clients) need partition='domain'")
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise ConfigError("noise_multiplier > 0 needs clip_norm (noise is calibrated to the clipping bound)")

    @property
    def mu(self) -> float:
        """The proximal weight actually used (0 for FedAvg)."""
        return self.prox_mu if self.algorithm == "fedprox" else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (``client_execution`` only when not ``"auto"``:
        the key came later, and leaving the default out keeps the config hashes and record
        checks of runs recorded before it unchanged)."""
        out = json.loads(json.dumps(dataclasses.asdict(self)))
        if out["client_execution"] == "auto":
            del out["client_execution"]
        return out

    def replace(self, **overrides: Any) -> FedConfig:
        """A copy with ``overrides`` applied (unknown keys raise ConfigError)."""
        return fed_config_from_dict({**self.to_dict(), **overrides})


def fed_config_keys() -> list[str]:
    """The valid federated config keys."""
    return [f.name for f in dataclasses.fields(FedConfig)]


def fed_config_from_dict(values: Mapping[str, Any]) -> FedConfig:
    """Builds a FedConfig, rejecting unknown keys with the list of valid ones."""
    unknown = sorted(set(values) - set(fed_config_keys()))
    if unknown:
        raise ConfigError(
            f"unknown federated config key(s) {', '.join(unknown)}; valid keys: {', '.join(fed_config_keys())}"
        )
    return FedConfig(**values)
