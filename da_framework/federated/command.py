"""``da fed EXPERIMENT``: run a federated experiment with progress per round and a result file.

The experiment file defines ``get_config()`` (model, seed, ... :class:`ExperimentConfig`
keys) and ``FED_CONFIG`` (a dict of :class:`~da_framework.federated.config.FedConfig`
keys).  The record goes to ``<results_dir>/<experiment>/fed_<algorithm>_<server>/seed<k>.json``
with the resolved configs, seed, versions, platform and git commit (like ``da run``'s).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()


def _split_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sorts ``key=value`` overrides into (ExperimentConfig keys, FedConfig keys)."""
    from da_framework.config import ConfigError, config_keys
    from da_framework.federated.config import fed_config_keys

    exp, fed = {}, {}
    for text in items:
        if "=" not in text:
            raise ConfigError(f"override {text!r} must be written key=value")
        key, raw = (s.strip() for s in text.split("=", 1))
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if key in fed_config_keys():
            fed[key] = value
        elif key in config_keys():
            exp[key] = value
        else:
            raise ConfigError(
                f"unknown config key {key!r}; federated keys: {', '.join(fed_config_keys())}; "
                f"experiment keys: {', '.join(config_keys())}"
            )
    return exp, fed


def load_fed_experiment(experiment: str) -> tuple[Any, Any]:
    """``(ExperimentConfig, FedConfig)`` of an experiment file (``FED_CONFIG`` may be absent)."""
    from da_framework.config import load_experiment, load_experiment_module
    from da_framework.federated.config import fed_config_from_dict

    config = load_experiment(experiment)
    fed = fed_config_from_dict(dict(getattr(load_experiment_module(experiment), "FED_CONFIG", {})))
    return config, fed


def fed_result_path(results_dir: Path, config: Any, fed: Any) -> Path:
    """``<results_dir>/<experiment>/fed_<algorithm>_<server optimizer>/seed<k>.json``."""
    from da_framework.results import slug

    return results_dir / slug(config.name) / slug(f"fed_{fed.algorithm}_{fed.server_optimizer}") / f"seed{config.seed}.json"


def fed_record(config: Any, fed_cfg: Any, result: Any) -> dict[str, Any]:
    """The result record of a federated run: ``make_record``'s fields plus the federated
    config and the clients (name, domain, labelled, size)."""
    from da_framework.results import make_record

    record = make_record(config, result.metrics, result.history, result.wall_time_s)
    record.update(
        format="da_framework.fed/1",
        fed_config=fed_cfg.to_dict(),
        clients=[{"name": c.name, "domain": c.domain, "labeled": c.labeled, "num_examples": c.num_examples} for c in result.clients],
    )
    return record


def run_fed_seeds(experiment: str, seeds: list[int], results_dir: Path, rounds: int | None = None) -> list[dict[str, Any]]:
    """Runs a federated experiment for each seed (skipping finished ones); one table row each.

    This is what an experiment file's ``run()`` calls, so ``da run <fed experiment>`` works too.
    """
    from da_framework.federated.runner import run_federated
    from da_framework.results import read_record, write_json_atomic

    rows = []
    for seed in seeds:
        config, fed_cfg = load_fed_experiment(experiment)
        config = config.replace(seed=seed)
        fed_cfg = fed_cfg.replace(**({} if rounds is None else {"rounds": rounds}))
        path = fed_result_path(results_dir, config, fed_cfg)
        if path.exists():
            record = read_record(path)
        else:
            record = fed_record(config, fed_cfg, run_federated(config, fed_cfg))
            write_json_atomic(path, record)
        rows.append({"experiment": config.name, "algorithm": fed_cfg.algorithm, "seed": seed, **record["metrics"]})
    return rows


def fed(
    experiment: Annotated[str, typer.Argument(help="experiment name (experiments/<name>.py) or path")],
    rounds: Annotated[int | None, typer.Option(help="override the number of rounds")] = None,
    seed: Annotated[int | None, typer.Option("--seed", "-s", help="seed")] = None,
    algorithm: Annotated[str | None, typer.Option(help="fedavg or fedprox")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override an experiment or federated key: key=value")] = None,
    results_dir: Annotated[Path, typer.Option(help="where result JSON files go")] = Path("results"),
    force: Annotated[bool, typer.Option(help="rerun when the result file already exists")] = False,
) -> None:
    """Federated training (FedAvg/FedProx/FedOpt) of one experiment; progress per round, one result file."""
    from da_framework.config import ConfigError
    from da_framework.data.domain import DomainError
    from da_framework.federated.partition import PartitionError, partition_table
    from da_framework.federated.runner import make_clients, run_federated
    from da_framework.losses.registry import LossError
    from da_framework.models.registry import ModelError
    from da_framework.results import write_json_atomic
    from da_framework.train.parallel import ParallelError

    user_errors = (ConfigError, DomainError, LossError, ModelError, ParallelError, PartitionError, ValueError, FloatingPointError)
    try:
        config, fed_cfg = load_fed_experiment(experiment)
        exp_over, fed_over = _split_overrides(set_ or [])
        if rounds is not None:
            fed_over["rounds"] = rounds
        if algorithm is not None:
            fed_over["algorithm"] = algorithm
        if seed is not None:
            exp_over["seed"] = seed
        config, fed_cfg = config.replace(**exp_over), fed_cfg.replace(**fed_over)
        path = fed_result_path(results_dir, config, fed_cfg)
        if path.exists() and not force:
            console.print(f"[dim]skip (done): {path} exists; pass --force to rerun[/]")
            return
        console.print(partition_table(make_clients(config, fed_cfg), title=f"{config.name}: {fed_cfg.partition} partition"))
    except user_errors as e:
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(code=2) from None

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task(f"{config.name} | {fed_cfg.algorithm} | seed {config.seed}", total=fed_cfg.rounds, info="")

        def on_round(r: int, m: dict[str, Any]) -> None:
            info = f"client loss {m['client_loss']:.3f}"
            if "test_accuracy" in m:
                info += f"  test acc {m['test_accuracy']:.3f}"
                progress.console.print(f"round {r:4d}: {info}")
            progress.update(task, completed=r, info=info)

        try:
            result = run_federated(config, fed_cfg, on_round=on_round)
        except user_errors as e:
            console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(code=2) from None

    write_json_atomic(path, fed_record(config, fed_cfg, result))
    table = Table(title=f"{config.name}: global model after {fed_cfg.rounds} rounds ({result.wall_time_s:.1f}s)")
    table.add_column("metric"), table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"-> {path}")
