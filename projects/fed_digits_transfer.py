"""Federated transfer learning on the embedded digits: pre-train centrally on the labelled
source domain, then fine-tune federatedly on clients that each hold a little labelled
``digits/rotate`` data (IID shares of the target train split).

The pre-training is the usual ``source_only`` run on ``digits/source`` (``pretrain_steps``);
the global model is evaluated on the ``digits/rotate`` test split.

Run: python -m da_framework.cli fed fed_digits_transfer   (or ``da run fed_digits_transfer``)
"""

from pathlib import Path

FED_CONFIG = {
    "algorithm": "fedavg",
    "rounds": 20,
    "num_clients": 8,
    "clients_per_round": 4,
    "local_epochs": 1,
    "local_batch_size": 16,
    "client_lr": 0.02,
    "partition": "domain",
    "domains": ("digits/rotate",),
    "pretrain_steps": 500,
    "eval_every": 5,
}


def get_config() -> dict:
    """Source pre-training setup (ExperimentConfig keys); the federated settings are FED_CONFIG."""
    return {"source": "digits/source", "target": "digits/rotate", "model": "lenet", "bottleneck_dim": 128}


def run(results_dir: Path, seeds: list[int], steps: int | None, overrides: dict | None = None, force: bool = False) -> list[dict]:
    """Federated runs for ``da run``: one per seed; ``steps`` (if given) is the number of rounds,
    ``overrides`` are ``--set`` values (experiment or federated keys), ``force`` reruns."""
    from da_framework.federated.command import run_fed_seeds

    return run_fed_seeds(__file__, seeds, Path(results_dir), rounds=steps, overrides=overrides, force=force)
