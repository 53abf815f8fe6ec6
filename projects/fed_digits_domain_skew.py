"""Federated domain skew on the embedded digits: every client holds one domain.

Labelled clients hold ``digits/source`` (unshifted), ``digits/blur`` or ``digits/scale``
data; unlabelled clients hold ``digits/rotate`` data and contribute only through the
per-client entropy-minimisation term (federated domain adaptation; no raw data leaves a
client).  The global model is evaluated on each domain's test split;
``target_test_accuracy`` is the accuracy on ``digits/rotate``.

Run: python -m da_framework.cli fed fed_digits_domain_skew   (progress per round), or
``da run fed_digits_domain_skew --seeds 3`` (``run()`` below; ``--steps`` sets the rounds).
"""

from pathlib import Path

FED_CONFIG = {
    "algorithm": "fedprox",
    "prox_mu": 0.01,
    "rounds": 30,
    "num_clients": 8,
    "clients_per_round": 4,
    "local_epochs": 1,
    "local_batch_size": 16,
    "client_lr": 0.05,
    "server_optimizer": "sgd",
    "server_lr": 1.0,
    "partition": "domain",
    "domains": ("digits/source", "digits/blur", "digits/scale"),
    "target_domains": ("digits/rotate",),
    "adaptation": "0.1*entropy",
    "eval_every": 5,
}


def get_config() -> dict:
    """Model and seed (ExperimentConfig keys); the federated settings are FED_CONFIG."""
    return {"source": "digits/source", "target": "digits/rotate", "model": "lenet", "bottleneck_dim": 128}


def run(results_dir: Path, seeds: list[int], steps: int | None, overrides: dict | None = None, force: bool = False) -> list[dict]:
    """Federated runs for ``da run``: one per seed; ``steps`` (if given) is the number of rounds,
    ``overrides`` are ``--set`` values (experiment or federated keys), ``force`` reruns."""
    from da_framework.federated.command import run_fed_seeds

    return run_fed_seeds(__file__, seeds, Path(results_dir), rounds=steps, overrides=overrides, force=force)
