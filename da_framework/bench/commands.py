"""The ``da bench``, ``da report`` and ``da reproduce`` commands (registered in da_framework/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[Exception], ...]:
    from da_framework.config import ConfigError
    from da_framework.data.domain import DomainError
    from da_framework.losses.registry import LossError
    from da_framework.models.registry import ModelError
    from da_framework.train.loop import NonFiniteLossError
    from da_framework.train.parallel import ParallelError

    return (ConfigError, DomainError, LossError, ModelError, ParallelError, NonFiniteLossError, ValueError)


def bench(
    sweep: Annotated[str, typer.Argument(help="sweep name (experiments/sweeps/<name>.py) or path to a file defining get_sweep()")],
    results_dir: Annotated[Path, typer.Option(help="where result JSON files go")] = Path("results"),
    max_runs: Annotated[int | None, typer.Option(help="stop after this many new runs (the rest stay pending)")] = None,
    vmap_seeds: Annotated[bool, typer.Option(help="train the pending seeds of each (pair, method, grid point) as one vmapped program")] = False,
) -> None:
    """Run every run of a sweep that has no result yet (methods x pairs x seeds x grid); resumable."""
    from da_framework.bench.sweep import expand_sweep, load_sweep, pending, run_or_record_divergence, run_seed_group, seed_groups

    errors = _user_errors()
    try:
        spec = load_sweep(sweep)
        runs = expand_sweep(spec, results_dir)
    except errors as e:
        _fail(str(e))
    todo = pending(runs)
    if max_runs is not None:
        todo = todo[:max_runs]
    console.print(f"sweep {spec['name']!r}: {len(runs)} runs, {len(runs) - len(pending(runs))} already done, running {len(todo)}")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
    ) as progress:
        total = progress.add_task("runs", total=len(todo), info="")
        if vmap_seeds:
            for group in seed_groups(todo):
                c = group[0].config
                label = f"{c.source}→{c.target} | {c.method} | {dict(group[0].hparams) or ''} seeds {[r.config.seed for r in group]} (vmapped)"
                try:
                    records = run_seed_group(group)
                except errors as e:
                    _fail(f"{label}: {e}")
                accs = ", ".join(f"{r['metrics']['target_test_accuracy']:.3f}" for r in records)
                progress.console.print(f"{label}: target acc {accs}")
                progress.advance(total, len(group))
            todo = []
        for run in todo:
            c = run.config
            label = f"{c.source}→{c.target} | {c.method} | {dict(run.hparams) or ''} seed {c.seed}"
            task = progress.add_task(label, total=c.steps, info="")

            def on_log(step: int, metrics: dict[str, float], task: int = task) -> None:
                progress.update(task, completed=step, info=f"loss {metrics['loss']:.3f}")

            try:
                record = run_or_record_divergence(run, on_log=on_log)
            except errors as e:
                _fail(f"{label}: {e}")
            progress.remove_task(task)
            if record.get("status") == "diverged":
                progress.console.print(f"[yellow]diverged:[/] {label}: {record['error']} -> recorded in {run.path}", soft_wrap=True)
            else:
                progress.console.print(
                    f"{label}: target acc {record['metrics']['target_test_accuracy']:.3f} "
                    f"({record['wall_time_s']:.1f}s) -> {run.path}"
                )
            progress.advance(total)
    left = len(pending(runs))
    console.print(f"done: {len(runs) - left}/{len(runs)} runs finished" + (f", {left} pending" if left else ""))


def report(
    results_dir: Annotated[Path, typer.Argument(help="a sweep's results folder (or a parent of several)")],
    select: Annotated[str, typer.Option(help="validator choosing among grid points for the headline table")] = "source_val_accuracy",
    metric: Annotated[str, typer.Option(help="metric of the headline table")] = "target_test_accuracy",
    embedding: Annotated[str, typer.Option(help="2-D embedding of the feature plots: pca or tsne")] = "pca",
) -> None:
    """Write Markdown and LaTeX tables (mean ± std over seeds) and PNG plots into the results folder."""
    from da_framework.bench.report import write_report

    try:
        written = write_report(results_dir, select=select, metric=metric, embedding=embedding)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo((results_dir / "report.md").read_text())
    console.print("wrote: " + ", ".join(str(p) for p in written))


def reproduce(
    results_file: Annotated[Path, typer.Argument(help="a run's result JSON file")],
    atol: Annotated[float, typer.Option(help="tolerance of the comparison (0: exact, as expected on CPU)")] = 0.0,
) -> None:
    """Rerun a run from its recorded config and seed and report whether the metrics match (exit 1 if not)."""
    from da_framework.bench.reproduce import compare_metrics, config_of_record
    from da_framework.results import platform_info, read_record
    from da_framework.train.loop import train

    if not results_file.is_file():
        _fail(f"no results file {results_file}")
    record = read_record(results_file)
    try:
        config = config_of_record(record)
        console.print(f"rerunning {config.source}→{config.target} | {config.method} | seed {config.seed} ({config.steps} steps)")
        result = train(config)
    except _user_errors() as e:
        _fail(str(e))
    diffs = compare_metrics(record["metrics"], result.metrics, atol)
    if "history" in record:
        diffs += [f"history{d}" for d in compare_metrics({"": record["history"]}, {"": result.history}, atol)]
    was, now = record.get("platform", {}), platform_info()
    if was.get("jax_backend") != now["jax_backend"] or record.get("versions", {}).get("jax") != _jax_version():
        console.print(f"[yellow]note:[/] recorded on {was.get('jax_backend')} jax {record.get('versions', {}).get('jax')}, "
                      f"rerun on {now['jax_backend']} jax {_jax_version()}: bitwise equality is only expected on the same setup")
    console.print(f"recorded commit {record.get('git_commit')}, rerun wall time {result.wall_time_s:.1f}s")
    if diffs:
        console.print(f"[bold red]MISMATCH[/]: {len(diffs)} metric(s) differ" + (f" by more than {atol}" if atol else ""))
        for d in diffs[:20]:
            console.print("  " + d, markup=False)
        raise typer.Exit(code=1)
    n = len(compare_metrics({}, record["metrics"]))  # number of recorded metric values
    h = len(compare_metrics({}, {"": record.get("history", [])}))
    console.print(f"[bold green]MATCH[/]: all {n} metric values and {h} history values identical" + (f" within {atol}" if atol else " (bitwise)")
                  + f"; target_test_accuracy {result.metrics['target_test_accuracy']}")


def _jax_version() -> str:
    import jax

    return jax.__version__
