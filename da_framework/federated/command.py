"""``da fed EXPERIMENT``: run a federated experiment with progress per round and a result file.

The experiment file defines ``get_config()`` (model, seed, ... :class:`ExperimentConfig`
keys) and ``FED_CONFIG`` (a dict of :class:`~da_framework.federated.config.FedConfig`
keys; an experiment without it is refused, not trained centrally).  The record goes to
``<results_dir>/<experiment>/fed_<algorithm>_<server>/cfg-<hash>/seed<k>.json`` with the
resolved configs, seed, versions, platform and git commit (like ``da run``'s); the hash
covers both configs, so a record is reused only for the exact configs that made it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from da_framework.console import RunProgress, escape, make_console

console = make_console()


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
    """``(ExperimentConfig, FedConfig)`` of an experiment file.

    Raises:
      ConfigError: if the file has no ``FED_CONFIG`` (it is not a federated experiment;
        the message lists the ones that are).
    """
    from da_framework.config import ConfigError
    from da_framework.experiment_files import experiment_names, experiment_path, load_experiment, load_experiment_module, project_names
    from da_framework.federated.config import fed_config_from_dict

    config = load_experiment(experiment)
    module = load_experiment_module(experiment)
    if not hasattr(module, "FED_CONFIG"):
        names = sorted(set(experiment_names()) | set(project_names()))
        federated = [n for n in names if "FED_CONFIG" in experiment_path(n).read_text()]
        raise ConfigError(
            f"experiment {experiment!r} has no FED_CONFIG, so it is not a federated experiment; "
            f"federated experiments: {', '.join(federated) or 'none found'} (or use `da run {experiment}`)"
        )
    return config, fed_config_from_dict(dict(module.FED_CONFIG))


ENGINES = ("jax", "flower-sim")


def fed_result_path(results_dir: Path, config: Any, fed: Any, engine: str = "jax") -> Path:
    """``<results_dir>/<experiment>/fed_<algorithm>_<server optimizer>/cfg-<hash>/seed<k>.json``
    (``fed_<algorithm>_<server optimizer>_<engine>`` for an engine other than ``jax``)."""
    from da_framework.results import config_hash, slug

    folder = slug(f"fed_{fed.algorithm}_{fed.server_optimizer}" + ("" if engine == "jax" else f"_{engine}"))
    return results_dir / slug(config.name) / folder / f"cfg-{config_hash(config, fed.to_dict())}" / f"seed{config.seed}.json"


def fed_record(config: Any, fed_cfg: Any, result: Any) -> dict[str, Any]:
    """The result record of a federated run: ``make_record``'s fields plus the federated
    config and the clients (name, domain, labelled, size)."""
    from da_framework.results import config_hash, make_record

    record = make_record(config, result.metrics, result.history, result.wall_time_s)
    record.update(
        format="da_framework.fed/1",
        config_hash=config_hash(config, fed_cfg.to_dict()),
        fed_config=fed_cfg.to_dict(),
        clients=[{"name": c.name, "domain": c.domain, "labeled": c.labeled, "num_examples": c.num_examples} for c in result.clients],
    )
    return record


def run_fed_seeds(
    experiment: str, seeds: list[int], results_dir: Path, rounds: int | None = None,
    overrides: dict[str, Any] | None = None, force: bool = False,
) -> list[dict[str, Any]]:
    """Runs a federated experiment for each seed; one table row each.

    A seed whose record exists for exactly these configs is reused (``force`` reruns it);
    ``overrides`` are ``--set`` values, experiment or federated keys.  This is what an
    project file's ``run()`` calls, so ``da run <fed project>`` works too.
    """
    from da_framework.federated.runner import run_federated
    from da_framework.results import check_record, claim, read_record, write_json_atomic

    exp_over, fed_over = _split_values(overrides or {})
    rows = []
    for seed in seeds:
        config, fed_cfg = load_fed_experiment(experiment)
        config = config.replace(**exp_over, seed=seed)
        fed_cfg = fed_cfg.replace(**fed_over, **({} if rounds is None else {"rounds": rounds}))
        path = fed_result_path(results_dir, config, fed_cfg)
        with claim(path):
            if path.exists() and not force:
                record = read_record(path)
                check_record(record, path, config, fed_cfg.to_dict())
            else:
                record = fed_record(config, fed_cfg, run_federated(config, fed_cfg))
                write_json_atomic(path, record)
        rows.append({"experiment": config.name, "algorithm": fed_cfg.algorithm, "seed": seed, **record["metrics"]})
    return rows


def _split_values(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sorts parsed overrides into (ExperimentConfig keys, FedConfig keys)."""
    from da_framework.federated.config import fed_config_keys

    fed = {k: v for k, v in values.items() if k in fed_config_keys()}
    return {k: v for k, v in values.items() if k not in fed}, fed


def fed(
    experiment: Annotated[str, typer.Argument(
        help="experiment or project name (experiments/<name>.py, projects/<name>.py) or path")],
    rounds: Annotated[int | None, typer.Option(help="override the number of rounds")] = None,
    seed: Annotated[int | None, typer.Option("--seed", "-s", help="seed")] = None,
    algorithm: Annotated[str | None, typer.Option(help="fedavg or fedprox")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override an experiment or federated key: key=value")] = None,
    results_dir: Annotated[Path, typer.Option(help="where result JSON files go")] = Path("results"),
    force: Annotated[bool, typer.Option(help="rerun when the result file already exists")] = False,
    engine: Annotated[str, typer.Option(help="jax: the in-process compiled simulation; flower-sim: the same "
                                             "experiment on Flower's simulation runtime (needs the fed extra)")] = "jax",
) -> None:
    """Federated training (FedAvg/FedProx/FedOpt) of one experiment; progress per round, one result file."""
    from da_framework.cli import fail
    from da_framework.errors import user_errors
    from da_framework.federated.partition import partition_table
    from da_framework.federated.runner import make_clients, run_federated
    from da_framework.results import check_record, check_writable, claim, read_record, write_json_atomic

    errors = (*user_errors(), FloatingPointError)
    if engine not in ENGINES:
        fail(f"unknown --engine {engine!r}; engines: {', '.join(ENGINES)}")
    run_engine = run_federated
    if engine == "flower-sim":
        try:
            from da_framework.federated.flower_runtime import run_flower_simulation as run_engine
        except ImportError as e:
            fail(f"--engine flower-sim needs Flower: {e}", e)
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
        path = fed_result_path(results_dir, config, fed_cfg, engine)
        if path.exists() and not force:
            check_record(read_record(path), path, config, fed_cfg.to_dict())
            console.print(f"[dim]skip (done): {escape(path)} holds this run; pass --force to rerun[/]", soft_wrap=True)
            return
        check_writable(results_dir)
        console.print(partition_table(make_clients(config, fed_cfg), title=f"{config.name}: {fed_cfg.partition} partition"))
    except errors as e:
        fail(str(e), e)

    label = f"{config.name} | {fed_cfg.algorithm} | seed {config.seed}" + ("" if engine == "jax" else f" | {engine}")
    with claim(path) as mine:
        if not mine:
            fail(f"{path} is being run by another process right now; wait for it or use another --results-dir")
        with RunProgress(console, 1, unit="round") as progress:
            on_log = progress.start(label, fed_cfg.rounds)

            def on_round(r: int, m: dict[str, Any]) -> None:
                if "test_accuracy" in m:
                    progress.print(f"round {r:4d}: client loss {m['client_loss']:.3f}  test acc {m['test_accuracy']:.3f}")
                on_log(r, {"loss": float(m["client_loss"])})

            try:
                result = run_engine(config, fed_cfg, on_round=on_round)
            except errors as e:
                fail(f"{label}: {e}", e)
            progress.done(f"{escape(label)}: finished in {result.wall_time_s:.1f}s")
        record = fed_record(config, fed_cfg, result)
        if engine != "jax":
            record["engine"] = engine
        write_json_atomic(path, record)
    table = Table(title=f"{config.name}: global model after {fed_cfg.rounds} rounds ({result.wall_time_s:.1f}s)")
    table.add_column("metric"), table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"-> {escape(path)}", soft_wrap=True)
