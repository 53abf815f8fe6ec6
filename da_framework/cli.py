"""The ``da`` command line: ``da run`` trains and evaluates, ``da list`` shows what exists."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="da_framework: domain adaptation on JAX.")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=2)


def _split_list(values: list[str] | None) -> list[str]:
    """Splits repeated/comma-separated option values, keeping commas inside brackets."""
    out: list[str] = []
    for v in values or []:
        depth, current = 0, ""
        for ch in v + ",":
            depth += (ch == "(") - (ch == ")")
            if ch == "," and depth == 0:
                out.append(current.strip()) if current.strip() else None
                current = ""
            else:
                current += ch
    return out


@app.command()
def run(
    experiments: Annotated[list[str], typer.Argument(help="experiment names (experiments/<name>.py) or paths")],
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help="method preset or spec; repeat or comma-separate")] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", "-s", help="seed(s); repeatable")] = None,
    seeds: Annotated[int | None, typer.Option(help="run seeds 0..N-1 (instead of --seed)")] = None,
    steps: Annotated[int | None, typer.Option(help="override the number of steps")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any config key: key=value")] = None,
    results_dir: Annotated[Path, typer.Option(help="where result JSON files go")] = Path("results"),
    force: Annotated[bool, typer.Option(help="rerun runs whose result file already exists")] = False,
    plugin: Annotated[list[Path] | None, typer.Option(help="Python file(s) to import first, e.g. ones registering losses")] = None,
) -> None:
    """Train and evaluate every (experiment, method, seed) combination; one result file per run."""
    load_plugins(plugin or [])
    from da_framework.config import ConfigError, load_experiment, load_experiment_module, parse_override
    from da_framework.data.domain import DomainError
    from da_framework.losses.registry import LossError
    from da_framework.models.registry import ModelError
    from da_framework.results import make_record, read_record, result_path, write_json_atomic
    from da_framework.train.loop import NonFiniteLossError, train
    from da_framework.train.method import parse_method
    from da_framework.train.parallel import ParallelError

    user_errors = (ConfigError, DomainError, LossError, ModelError, ParallelError, NonFiniteLossError, ValueError)
    try:
        overrides = dict(parse_override(s) for s in set_ or [])
        if steps is not None:
            overrides["steps"] = steps
        configs = []
        seed_list = list(range(seeds)) if seeds else (seed or [None])
        custom = [e for e in experiments if hasattr(load_experiment_module(e), "run")]
        if custom:
            if len(experiments) > 1:
                raise ConfigError(f"experiment(s) {', '.join(custom)} define their own run(); run them one at a time")
            module = load_experiment_module(custom[0])
            table_rows = module.run(results_dir=results_dir, seeds=list(range(seeds)) if seeds else (seed or [0]), steps=steps)
            console.print(dict_table(custom[0], table_rows))
            return
        for exp in experiments:
            base = load_experiment(exp).replace(**overrides)
            for m in _split_list(method) or [base.method]:
                parse_method(m)  # fail fast on a bad method, before any training
                for s in seed_list:
                    configs.append(base.replace(method=m, **({} if s is None else {"seed": s})))
    except user_errors as e:
        _fail(str(e))

    rows = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        runs = progress.add_task("runs", total=len(configs), info="")
        for cfg in configs:
            path = result_path(results_dir, cfg)
            label = f"{cfg.name} | {cfg.method} | seed {cfg.seed}"
            if path.exists() and not force:
                rows.append(read_record(path))
                progress.console.print(f"[dim]skip (done): {label} -> {path}[/]")
                progress.advance(runs)
                continue
            task = progress.add_task(label, total=cfg.steps, info="")

            def on_log(step: int, metrics: dict[str, float], task: int = task) -> None:
                progress.update(task, completed=step, info=f"loss {metrics['loss']:.3f}")

            try:
                result = train(cfg, on_log=on_log)
            except user_errors as e:
                _fail(f"{label}: {e}")
            record = make_record(cfg, result.metrics, result.history, result.wall_time_s)
            write_json_atomic(path, record)
            rows.append(record)
            progress.remove_task(task)
            progress.console.print(
                f"{label}: target acc {result.metrics['target_test_accuracy']:.3f} "
                f"({result.wall_time_s:.1f}s) -> {path}"
            )
            progress.advance(runs)
    console.print(results_table(rows))


def load_plugins(paths: list[Path]) -> None:
    """Imports user files (e.g. ones that ``@register_loss`` new losses) before a run."""
    import importlib.util

    for path in paths:
        if not path.is_file():
            _fail(f"plugin file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"da_plugin_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def results_table(records: list[dict]) -> Table:
    """A rich table of target/source accuracy, mean +- std over seeds, per experiment and method."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in records:
        c = r["config"]
        groups.setdefault((c["name"], c["source"], c["target"], c["method"]), []).append(r)
    table = Table(title="da_framework results (accuracy, mean ± std over seeds)")
    for col in ("experiment", "source → target", "method", "seeds", "target test acc", "source val acc"):
        table.add_column(col, justify="right" if "acc" in col or col == "seeds" else "left")

    def fmt(values: list[float]) -> str:
        m = statistics.fmean(values)
        return f"{m:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{m:.3f}"

    for (name, src, tgt, method), rs in groups.items():
        table.add_row(
            name, f"{src} → {tgt}", method, str(len(rs)),
            fmt([r["metrics"]["target_test_accuracy"] for r in rs]),
            fmt([r["metrics"]["source_val_accuracy"] for r in rs]),
        )
    return table


def dict_table(title: str, rows: list[dict]) -> Table:
    """A rich table of flat dicts (columns: union of keys, in first-seen order)."""
    table = Table(title=title)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns))
    return table


@app.command(name="list")
def list_() -> None:
    """Show the methods, losses, domains, models and experiments that exist."""
    from da_framework.config import experiment_names
    from da_framework.data.registry import domain_entries
    from da_framework.losses.registry import loss_specs
    from da_framework.models.registry import BACKBONES
    from da_framework.train.method import PRESETS
    from da_framework.train.schedules import SCHEDULES

    t = Table(title="methods (presets; or write 'cross_entropy + 0.5*mmd' etc.)")
    t.add_column("method"), t.add_column("loss terms")
    for name, spec in PRESETS.items():
        t.add_row(name, spec)
    console.print(t)
    t = Table(title="losses")
    for col in ("loss", "description", "hyper-parameters", "reference"):
        t.add_column(col, overflow="fold")
    for s in loss_specs():
        t.add_row(s.name, s.description, ", ".join(f"{k}={v!r}" for k, v in s.hparams.items()), s.reference)
    console.print(t)
    t = Table(title="weight schedules (term@schedule)")
    t.add_column("schedule"), t.add_column("multiplier at progress p")
    for name, (_, desc) in SCHEDULES.items():
        t.add_row(name, desc)
    console.print(t)
    t = Table(title="domains")
    t.add_column("domain"), t.add_column("description"), t.add_column("data")
    for d in domain_entries():
        t.add_row(d.name, d.description, "tfds (prepare first)" if d.needs_download else "embedded")
    console.print(t)
    t = Table(title="models")
    t.add_column("model"), t.add_column("description")
    for name, (_, desc) in BACKBONES.items():
        t.add_row(name, desc)
    console.print(t)
    console.print("experiments: " + (", ".join(experiment_names()) or "none found in ./experiments"))


# Commands defined next to what they drive.
from da_framework.bench.commands import bench, report, reproduce  # noqa: E402
from da_framework.federated.command import fed  # noqa: E402

app.command(name="bench")(bench)
app.command(name="report")(report)
app.command(name="reproduce")(reproduce)
app.command(name="fed")(fed)


def main() -> None:
    """Entry point of the ``da`` script."""
    app()


if __name__ == "__main__":
    main()
