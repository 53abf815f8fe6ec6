"""The ``da bench``, ``da report`` and ``da reproduce`` commands (registered in da_framework/cli.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from da_framework.console import RunProgress, escape, make_console

console = make_console()


def _fail(message: str, error: BaseException | None = None) -> None:
    from da_framework.cli import fail

    fail(message, error)


def _user_errors() -> tuple[type[Exception], ...]:
    from da_framework.errors import user_errors

    return user_errors()


def _print_plan(runs: list[Any]) -> None:
    """One line per run of a sweep: done or pending, its record path, and its hyper-parameters (sampled included)."""
    import json

    for r in runs:
        c = r.config
        state = "done   " if r.path.exists() else "pending"
        console.print(f"{state} {escape(str(r.path))}  seed {c.seed}  {escape(json.dumps(dict(r.hparams), sort_keys=True))}",
                      soft_wrap=True, highlight=False)
    console.print(f"{len(runs)} runs, {sum(not r.path.exists() for r in runs)} pending (--plan: nothing trained)")


def bench(
    sweep: Annotated[str, typer.Argument(help="sweep name (experiments/sweeps/<name>.py) or path to a file defining get_sweep()")],
    results_dir: Annotated[Path, typer.Option(help="where result JSON files go")] = Path("results"),
    max_runs: Annotated[int | None, typer.Option(min=0, help="stop after this many new runs (the rest stay pending)")] = None,
    vmap_seeds: Annotated[bool, typer.Option(help="train the pending seeds of each (pair, method, grid point) as one vmapped program")] = False,
    vmap_samples: Annotated[int | None, typer.Option(min=0, help="train pending runs that differ only in seed, learning rate, weight decay "
                                                     "and loss numbers as one program, N runs at most (0: all)")] = None,
    launcher: Annotated[str, typer.Option(help="where runs execute: local, multi-device, ray or slurm")] = "local",
    retries: Annotated[int, typer.Option(min=0, help="non-local launchers: rerun runs a dead worker left pending this many times")] = 2,
    workers: Annotated[int | None, typer.Option(min=1, help="multi-device: worker processes (default: one per local accelerator; 1 on CPU)")] = None,
    ray_address: Annotated[str | None, typer.Option(help="ray: cluster address ('auto', 'ray://host:10001'); default starts a local one")] = None,
    cpus_per_run: Annotated[float | None, typer.Option(min=0.0, help="ray/slurm: CPUs reserved per run (ray default 1, slurm 2)")] = None,
    gpus_per_run: Annotated[float | None, typer.Option(min=0.0, help="ray/slurm: GPUs reserved per run (default 0)")] = None,
    slurm_partition: Annotated[str | None, typer.Option(help="slurm: partition to submit to")] = None,
    slurm_timeout_min: Annotated[int | None, typer.Option(min=1, help="slurm: time limit per run in minutes (default 60)")] = None,
    slurm_cluster: Annotated[str | None, typer.Option(help="slurm: submitit cluster ('local' runs the jobs as local subprocesses)")] = None,
    plan: Annotated[bool, typer.Option(help="print every run (pair, method, seed, hyper-parameters, done or not) and train nothing")] = False,
) -> None:
    """Run every run of a sweep that has no result yet (methods x pairs x seeds x grid); resumable.

    Several ``da bench`` processes, on one host or many, with any mix of launchers, may
    work on one results folder at once: each run is claimed before it starts, so no run is
    done twice, and a killed worker's run stays pending for the next attempt.
    """
    from da_framework.bench.sweep import (
        check_done,
        expand_sweep,
        load_sweep,
        pending,
        run_or_record_divergence,
        run_seed_group,
        seed_groups,
    )
    from da_framework.results import check_writable, claim

    errors = _user_errors()
    try:
        spec = load_sweep(sweep)
        runs = expand_sweep(spec, results_dir)
        check_done(runs)  # an edited sweep must not mix its results with the old ones
        if plan:
            _print_plan(runs)
            return
        check_writable(results_dir)
    except errors as e:
        _fail(str(e), e)
    todo = pending(runs)
    if max_runs is not None:
        todo = todo[:max_runs]
    console.print(f"sweep {escape(spec['name'])!s}: {len(runs)} runs, {len(runs) - len(pending(runs))} already done, running {len(todo)}"
                  + (f" with --launcher {launcher}" if launcher != "local" else ""))
    from da_framework.bench.launchers import LAUNCHERS

    if launcher not in LAUNCHERS:
        _fail(f"unknown launcher {launcher!r}; valid launchers: {', '.join(LAUNCHERS)}")
    stray = _stray_options(launcher, {"--workers": workers, "--ray-address": ray_address, "--cpus-per-run": cpus_per_run,
                                      "--gpus-per-run": gpus_per_run, "--slurm-partition": slurm_partition,
                                      "--slurm-timeout-min": slurm_timeout_min, "--slurm-cluster": slurm_cluster})
    if stray:
        _fail(f"{', '.join(stray)} do not apply to --launcher {launcher}")
    if vmap_seeds and vmap_samples is not None:
        _fail("--vmap-seeds and --vmap-samples both group runs; --vmap-samples already groups seeds, drop --vmap-seeds")
    if launcher != "local":
        if vmap_seeds or vmap_samples is not None:
            _fail("--vmap-seeds / --vmap-samples run with --launcher local only; drop one of them")
        _launch(launcher, runs, todo, results_dir, retries=retries, workers=workers, address=ray_address,
                cpus=cpus_per_run, gpus=gpus_per_run, partition=slurm_partition, timeout_min=slurm_timeout_min,
                cluster=slurm_cluster)
        return
    busy = 0
    with RunProgress(console, len(todo)) as progress:
        if vmap_seeds or vmap_samples is not None:
            from da_framework.bench.vmap_samples import run_sample_group, sample_groups

            grouped = seed_groups(todo) if vmap_seeds else sample_groups(todo, vmap_samples or 0)
            for group in grouped:
                c = group[0].config
                label = (f"{c.source}→{c.target} | {c.method} | {dict(group[0].hparams) or ''} seeds {[r.config.seed for r in group]} (vmapped)"
                         if vmap_seeds else f"{c.source}→{c.target} | {len(group)} runs of {group[0].sweep_method or c.method} (one program)")
                with _claim_all(group, claim) as mine:
                    busy += len(group) - len(mine)
                    if not mine:
                        progress.done(f"[yellow]skip (running in another process):[/] {escape(label)}", advance=len(group))
                        continue
                    progress.start(label, c.steps)
                    try:
                        records = run_seed_group(mine) if vmap_seeds else run_sample_group(mine)
                    except errors as e:
                        _fail(f"{label}: {e}", e)
                accs = ", ".join(f"{r['metrics']['target_test_accuracy']:.3f}" for r in records)
                progress.done(f"{escape(label)}: target acc {accs}", advance=len(group))
                for alarm in (f"{r.get('hparams') or ''} seed {r['seed']}: {a}".lstrip() for r in records for a in r.get("alarms", [])):
                    progress.print(f"[bold red]alarm:[/] {escape(label)}: {escape(alarm)}")
            todo = []
        for run in todo:
            c = run.config
            label = f"{c.source}→{c.target} | {c.method} | {dict(run.hparams) or ''} seed {c.seed}"
            with claim(run.path) as mine:
                if not mine or run.path.exists():  # another worker has it, or finished it meanwhile
                    busy += not mine
                    progress.done(f"[yellow]skip ({'running in another process' if not mine else 'finished by another process'}):[/] {escape(label)}")
                    continue
                on_log = progress.start(label, c.steps)
                try:
                    record = run_or_record_divergence(run, on_log=on_log)
                except errors as e:
                    _fail(f"{label}: {e}", e)
            if record.get("status") == "diverged":
                progress.done(f"[yellow]diverged:[/] {escape(label)}: {escape(record['error'])} -> recorded in {escape(run.path)}")
            else:
                progress.done(f"{escape(label)}: target acc {record['metrics']['target_test_accuracy']:.3f} "
                              f"({record['wall_time_s']:.1f}s) -> {escape(run.path)}")
                for alarm in record.get("alarms", []):
                    progress.print(f"[bold red]alarm:[/] {escape(label)}: {escape(alarm)}")
    left = len(pending(runs))
    console.print(f"done: {len(runs) - left}/{len(runs)} runs finished" + (f", {left} pending" if left else "")
                  + (f" ({busy} of them running in another process)" if busy else ""))


def _launch(launcher: str, runs: list[Any], todo: list[Any], results_dir: Path, *, retries: int, workers: int | None,
            address: str | None, cpus: float | None, gpus: float | None, partition: str | None,
            timeout_min: int | None, cluster: str | None) -> None:
    """``da bench --launcher multi-device|ray|slurm``: hands ``todo`` to the launcher and
    prints one line per finished run as it arrives."""
    from da_framework.bench.launchers import LauncherError, launch
    from da_framework.bench.sweep import pending

    options: dict[str, Any]
    if launcher == "multi-device":
        options = {"workers": workers}
    elif launcher == "ray":
        options = {"address": address, "num_cpus": cpus, "num_gpus": gpus}
    elif launcher == "slurm":
        options = {"partition": partition, "timeout_min": timeout_min, "cluster": cluster,
                   "cpus_per_task": None if cpus is None else int(cpus), "gpus_per_task": None if gpus is None else int(gpus)}
    else:
        options = {}
    counts = {"done": 0, "diverged": 0, "failed": 0}

    def on_outcome(o: Any) -> None:
        name = escape(Path(o.path).relative_to(results_dir.absolute()) if o.path and Path(o.path).is_relative_to(results_dir.absolute()) else o.path)
        if o.status == "done":
            counts["done"] += 1
            console.print(f"[{counts['done'] + counts['diverged']}/{len(todo)}] {name}: target acc {o.target_accuracy:.3f} "
                          f"({o.wall_time_s:.1f}s on {escape(o.worker)})")
            for alarm in o.alarms:
                console.print(f"[bold red]alarm:[/] {name}: {escape(alarm)}")
        elif o.status == "diverged":
            counts["diverged"] += 1
            console.print(f"[yellow]diverged:[/] {name}: {escape(o.error)}")
        elif o.status == "failed":
            counts["failed"] += 1
            console.print(f"[red]failed[/] {name or escape(o.worker)}: {escape(o.error)} (stays pending)", soft_wrap=True)

    started = time.perf_counter()
    try:
        attempts = launch(launcher, todo, on_outcome, retries=retries, results_dir=results_dir / _sweep_folder(runs, results_dir),
                          **{k: v for k, v in options.items() if v is not None})
    except (*_user_errors(), LauncherError) as e:
        _fail(str(e), e)
    left = len(pending(runs))
    console.print(f"done: {len(runs) - left}/{len(runs)} runs finished" + (f", {left} pending" if left else "")
                  + f" ({time.perf_counter() - started:.1f}s, {attempts} attempt{'s' if attempts != 1 else ''})")


_OPTION_LAUNCHERS = {"--workers": {"multi-device"}, "--ray-address": {"ray"}, "--cpus-per-run": {"ray", "slurm"},
                     "--gpus-per-run": {"ray", "slurm"}, "--slurm-partition": {"slurm"}, "--slurm-timeout-min": {"slurm"},
                     "--slurm-cluster": {"slurm"}}


def _stray_options(launcher: str, given: dict[str, Any]) -> list[str]:
    """The launcher options that were given but do not apply to ``launcher``."""
    return [k for k, v in given.items() if v is not None and launcher not in _OPTION_LAUNCHERS[k]]


def _sweep_folder(runs: list[Any], results_dir: Path) -> Path:
    """The sweep's own folder under ``results_dir`` (the first path part of its records)."""
    return Path(Path(runs[0].path).relative_to(results_dir).parts[0]) if runs else Path(".")


class _claim_all:
    """Claims every run of a group it can; ``as`` gives the runs this process holds."""

    def __init__(self, group: list[Any], claim: Any) -> None:
        import contextlib

        self.group, self.claim, self.stack = group, claim, contextlib.ExitStack()

    def __enter__(self) -> list[Any]:
        return [r for r in self.group if self.stack.enter_context(self.claim(r.path)) and not r.path.exists()]

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()


def report(
    results_dir: Annotated[Path, typer.Argument(help="a sweep's results folder (or a parent of several)")],
    select: Annotated[str, typer.Option(help="validator choosing among grid points for the headline table")] = "source_val_accuracy",
    metric: Annotated[str, typer.Option(help="metric of the headline table")] = "target_test_accuracy",
    embedding: Annotated[str, typer.Option(help="2-D embedding of the feature plots: pca or tsne")] = "pca",
) -> None:
    """Write Markdown and LaTeX tables (mean ± std over seeds) and PNG plots into the results folder."""
    from da_framework.bench.report import write_report

    skipped: list[str] = []
    try:
        written = write_report(results_dir, select=select, metric=metric, embedding=embedding, skipped=skipped)
    except _user_errors() as e:
        _fail(str(e), e)
    typer.echo((results_dir / "report.md").read_text())
    for line in skipped:
        console.print(f"[yellow]warning:[/] left out {escape(line)}", soft_wrap=True)
    console.print("wrote: " + ", ".join(escape(p) for p in written), soft_wrap=True)


def reproduce(
    results_file: Annotated[Path, typer.Argument(help="a run's result JSON file")],
    atol: Annotated[float, typer.Option(min=0.0, help="tolerance of the comparison (0: exact, as expected on CPU)")] = 0.0,
) -> None:
    """Rerun a run from its recorded config and seed and report whether the metrics match (exit 1 if not).

    A ``da run``/``da bench`` record reruns through ``train``; a ``da fed`` record through
    ``run_federated`` with its recorded federated config; a diverged record must diverge
    again with the same error.
    """
    from da_framework.bench.reproduce import compare_metrics, config_of_record
    from da_framework.results import DIVERGED_FORMAT, RecordError, platform_info, read_record
    from da_framework.train.loop import NonFiniteLossError, train
    from da_framework.xla_cpu import XlaFlagsError, use_xla_flags

    errors = (*_user_errors(), XlaFlagsError)
    try:
        if not results_file.is_file():
            raise RecordError(f"no results file {results_file}")
        record = read_record(results_file)
        fmt = record["format"]
        if not (fmt.startswith("da_framework.run") or fmt.startswith("da_framework.fed") or fmt == DIVERGED_FORMAT):
            raise RecordError(f"{results_file} is a {fmt} record; da reproduce reruns run, federated and diverged records")
        config = config_of_record(record)
        # The record's XLA flags: records from before flags were recorded ran with none.
        recorded_flags = record.get("platform", {}).get("xla_flags", "")
        if use_xla_flags(recorded_flags):
            console.print(f"rerunning with the recorded XLA_FLAGS={recorded_flags!r}", markup=False)
    except errors as e:
        _fail(str(e), e)
    label = f"{config.source}→{config.target} | {config.method} | seed {config.seed}"
    diffs: list[str] = []
    try:
        if fmt.startswith("da_framework.fed"):
            from da_framework.federated.config import fed_config_from_dict
            from da_framework.federated.runner import run_federated

            fed_cfg = fed_config_from_dict(record["fed_config"])
            console.print(f"rerunning federated {escape(config.name)} | {fed_cfg.algorithm} | seed {config.seed} ({fed_cfg.rounds} rounds)")
            result = run_federated(config, fed_cfg)
        else:
            console.print(f"rerunning {escape(label)} ({config.steps} steps)")
            start = time.perf_counter()
            try:
                result = train(config)
            except NonFiniteLossError as e:
                if fmt != DIVERGED_FORMAT:
                    raise
                same = str(e) == record["error"]
                console.print(f"rerun wall time {time.perf_counter() - start:.1f}s")
                if not same:
                    console.print(f"[bold red]MISMATCH[/]: diverged again, with another error: recorded {escape(record['error'])!s}, rerun {escape(e)!s}")
                    raise typer.Exit(code=1) from None
                console.print(f"[bold green]MATCH[/]: diverged again with the recorded error: {escape(e)}")
                return
            if fmt == DIVERGED_FORMAT:
                console.print(f"[bold red]MISMATCH[/]: the record says the run diverged ({escape(record['error'])}), the rerun finished "
                              f"with target_test_accuracy {result.metrics['target_test_accuracy']}")
                raise typer.Exit(code=1)
    except errors as e:
        _fail(str(e), e)
    diffs = compare_metrics(record["metrics"], result.metrics, atol)
    if "history" in record:
        diffs += [f"history{d}" for d in compare_metrics({"": record["history"]}, {"": result.history}, atol)]
    was, now = record.get("platform", {}), platform_info()
    if was.get("jax_backend") != now["jax_backend"] or record.get("versions", {}).get("jax") != _jax_version():
        console.print(f"[yellow]note:[/] recorded on {was.get('jax_backend')} jax {record.get('versions', {}).get('jax')}, "
                      f"rerun on {now['jax_backend']} jax {_jax_version()}: bitwise equality is only expected on the same setup")
    if now["jax_backend"] == "cpu" and was.get("cpu") != now["cpu"]:
        console.print(f"note: recorded on CPU {was.get('cpu', 'not recorded')!r}, rerun on {now['cpu']!r}: "
                      "XLA:CPU rounds differently across CPU models, so bitwise equality is only expected on the same one",
                      markup=False)
    console.print(f"recorded commit {record.get('git_commit')}, rerun wall time {result.wall_time_s:.1f}s")
    if diffs and str(record.get("runner", "")).startswith("vmap_") and not atol:
        console.print(f"note: this run was trained together with others in one program ({record['runner']}), which "
                      "sums in another order than a run alone; compare with a tolerance, e.g. --atol 1e-4", markup=False)
    if diffs:
        console.print(f"[bold red]MISMATCH[/]: {len(diffs)} metric(s) differ" + (f" by more than {atol}" if atol else ""))
        for d in diffs[:20]:
            console.print("  " + d, markup=False)
        raise typer.Exit(code=1)
    n = len(compare_metrics({}, record["metrics"]))  # number of recorded metric values
    h = len(compare_metrics({}, {"": record.get("history", [])}))
    headline = next((f"; {k} {result.metrics[k]}" for k in ("target_test_accuracy", "test_accuracy") if k in result.metrics), "")
    console.print(f"[bold green]MATCH[/]: all {n} metric values and {h} history values identical" + (f" within {atol}" if atol else " (bitwise)")
                  + headline)


def _jax_version() -> str:
    import jax

    return jax.__version__
