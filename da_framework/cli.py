"""The ``da`` command line: ``da run`` trains and evaluates, ``da list`` shows what exists.

Bad input (an unknown name, a bad config value, a record made by another config) is one
line, ``error: ...``, with exit code 2; ``da --debug ...`` adds the traceback.  Any other
exception is a bug and is shown with its traceback.
"""

from __future__ import annotations

import inspect
import statistics
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from da_framework.console import RunProgress, escape, make_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="da_framework: domain adaptation on JAX.")
console = make_console()
DEBUG = {"on": False}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="show the traceback of input errors too")] = False) -> None:
    """da_framework: domain adaptation on JAX."""
    from da_framework.compile_cache import enable_compile_cache

    DEBUG["on"] = debug
    enable_compile_cache()  # compiled programs reused across runs and processes ($DA_COMPILE_CACHE=off disables)


def fail(message: str, error: BaseException | None = None) -> NoReturn:
    """Prints ``error: message`` (markup escaped) and exits with code 2; with ``--debug``,
    the traceback of ``error`` first."""
    if error is not None and DEBUG["on"]:
        console.print(escape("".join(traceback.format_exception(error))), soft_wrap=True)
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)



def _data_origin(entry: Any) -> str:
    """Where a domain's data comes from, for ``da list``."""
    if not entry.needs_download:
        return "embedded"
    from da_framework.data.image_datasets import DATASETS

    if entry.name.split("/")[0] in ("imagefolder", *DATASETS):
        return "image folder in the data dir"
    return "tfds or $DA_DATA_DIR (prepare first)"


def _split_list(values: list[str] | None) -> list[str]:
    """Splits repeated/comma-separated option values, keeping commas inside brackets and quotes."""
    out: list[str] = []
    for v in values or []:
        depth, quote, current = 0, "", ""
        for ch in v + ",":
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            else:
                depth += (ch in "([{") - (ch in ")]}")
            if ch == "," and depth == 0 and not quote:
                out.append(current.strip()) if current.strip() else None
                current = ""
            else:
                current += ch
    return out


def _run_custom(name: str, results_dir: Path, seeds: list[int], steps: int | None, overrides: dict[str, Any],
                methods: list[str], force: bool) -> None:
    """``da run`` of a project (``projects/<name>.py``, a program with its own ``run()``):
    passes on the options its ``run()`` takes and refuses the others (instead of silently
    ignoring them)."""
    from da_framework.config import ConfigError
    from da_framework.experiment_files import experiment_path, load_experiment_module

    module = load_experiment_module(name)
    takes = inspect.signature(module.run).parameters
    given = {"--set": ("overrides", overrides), "--method": ("method", methods), "--force": ("force", force)}
    refused = [flag for flag, (param, value) in given.items() if value and param not in takes]
    if refused:
        raise ConfigError(
            f"project {name!r} defines its own run(), which takes no {', '.join(refused)}; "
            f"edit {experiment_path(name)} (or a copy of it) to change what it runs"
        )
    kwargs = {param: value for param, value in given.values() if value and param in takes}
    if "method" in kwargs:
        kwargs["method"] = methods
    rows = module.run(results_dir=results_dir, seeds=seeds, steps=steps, **kwargs)
    console.print(dict_table(name, rows))


@app.command()
def run(
    experiments: Annotated[list[str], typer.Argument(
        help="experiment or project names (experiments/<name>.py, projects/<name>.py) or paths")],
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help="method preset or spec; repeat or comma-separate")] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", "-s", min=0, help="seed(s); repeatable")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="run seeds 0..N-1 (instead of --seed)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override the number of steps")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any config key: key=value")] = None,
    results_dir: Annotated[Path, typer.Option(help="where result JSON files go")] = Path("results"),
    force: Annotated[bool, typer.Option(help="rerun the runs of exactly these configs even if their records exist")] = False,
    plugin: Annotated[list[Path] | None, typer.Option(help="Python file(s) to import first, e.g. ones registering losses")] = None,
) -> None:
    """Train and evaluate every (experiment, method, seed) combination; one result file per run.

    Records go to ``<results-dir>/<experiment>/<method>/cfg-<config hash>/seed<k>.json``: a
    finished run is skipped only when its record was made by the same config, and runs of
    different configs never overwrite each other.
    """
    from da_framework.config import parse_override
    from da_framework.experiment_files import load_experiment, load_experiment_module
    from da_framework.errors import user_errors
    from da_framework.results import check_writable, result_path
    from da_framework.train.method import parse_method

    load_plugins(plugin or [])
    errors = user_errors()
    try:
        set_values = dict(parse_override(s) for s in set_ or [])
        overrides = {**set_values, **({} if steps is None else {"steps": steps})}
        configs = []
        seed_list = list(range(seeds)) if seeds else (seed or [None])
        custom = [e for e in experiments if hasattr(load_experiment_module(e), "run")]
        methods = _split_list(method)
        if method is not None and not methods:
            from da_framework.losses.registry import LossError

            raise LossError("--method is empty; name a preset (`da list`) or write terms such as 'cross_entropy + 1.0*dann'")
        if custom:
            if len(experiments) > 1:
                from da_framework.config import ConfigError

                raise ConfigError(f"project(s) {', '.join(custom)} define their own run(); run them one at a time")
            check_writable(results_dir)
            _run_custom(custom[0], results_dir, list(range(seeds)) if seeds else (seed or [0]), steps,
                        set_values, methods, force)
            return
        for exp in experiments:
            base = load_experiment(exp).replace(**overrides)
            for m in methods or [base.method]:
                parse_method(m)  # fail fast on a bad method, before any training
                for s in seed_list:
                    configs.append(base.replace(method=m, **({} if s is None else {"seed": s})))
        paths = [result_path(results_dir, cfg) for cfg in configs]
        check_writable(results_dir)
    except errors as e:
        fail(str(e), e)
    rows = run_configs(configs, paths, force)
    console.print(results_table(rows))


def run_configs(configs: list[Any], paths: list[Path], force: bool = False) -> list[dict[str, Any]]:
    """Trains each config whose record at the matching path is missing (or every one with
    ``force``), writes its record, and returns every record (reused ones included).

    A run whose loss becomes non-finite is recorded as diverged and the batch goes on; a run
    that another process has claimed is skipped; a record made by another config stops the
    batch before anything is trained.
    """
    from da_framework.errors import user_errors
    from da_framework.results import (
        check_record,
        claim,
        make_diverged_record,
        make_record,
        read_record,
        write_json_atomic,
    )
    from da_framework.train.loop import NonFiniteLossError, train

    errors = user_errors()
    try:
        for cfg, path in zip(configs, paths):
            if path.exists() and not force:
                check_record(read_record(path), path, cfg)
    except errors as e:
        fail(str(e), e)
    rows: list[dict[str, Any]] = []
    with RunProgress(console, len(configs)) as progress:
        for cfg, path in zip(configs, paths):
            label = f"{cfg.name} | {cfg.method} | seed {cfg.seed}"
            with claim(path) as mine:
                if not mine:
                    progress.done(f"[yellow]skip (running in another process):[/] {escape(label)} -> {escape(path)}")
                    continue
                if path.exists() and not force:  # finished earlier (or by another process meanwhile)
                    try:
                        record = read_record(path)
                        check_record(record, path, cfg)
                    except errors as e:
                        fail(str(e), e)
                    rows.append(record)
                    progress.done(f"[dim]skip (done): {escape(label)} -> {escape(path)}[/]")
                    continue
                on_log = progress.start(label, cfg.steps)
                start = time.perf_counter()
                try:
                    result = train(cfg, on_log=on_log)
                except NonFiniteLossError as e:
                    record = make_diverged_record(cfg, e, time.perf_counter() - start)
                    write_json_atomic(path, record)
                    rows.append(record)
                    progress.done(f"[yellow]diverged:[/] {escape(label)}: {escape(e)} -> recorded in {escape(path)}")
                    continue
                except errors as e:
                    fail(f"{label}: {e}", e)
                record = make_record(cfg, result.metrics, result.history, result.wall_time_s)
                write_json_atomic(path, record)
                rows.append(record)
                progress.done(f"{escape(label)}: target acc {result.metrics['target_test_accuracy']:.3f} "
                              f"({result.wall_time_s:.1f}s) -> {escape(path)}")
                for alarm in record.get("alarms", []):
                    progress.print(f"[bold red]alarm:[/] {escape(label)}: {escape(alarm)}")
    return rows


def load_plugins(paths: list[Path]) -> None:
    """Imports user files (e.g. ones that ``@register_loss`` new losses) before a run."""
    from da_framework.config import ConfigError
    from da_framework.experiment_files import import_python_file

    for path in paths:
        if not path.is_file():
            fail(f"plugin file {path} does not exist")
        try:
            import_python_file(path, f"da_plugin_{path.stem}", kind="plugin")
        except ConfigError as e:
            fail(str(e), e)


def results_table(records: list[dict]) -> Table:
    """A rich table of target/source accuracy, mean +- std over seeds, per experiment and method."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    diverged: dict[tuple[str, str, str, str], int] = {}
    for r in records:
        c = r["config"]
        key = (c["name"], c["source"], c["target"], c["method"])
        if r.get("status") == "diverged":
            diverged[key] = diverged.get(key, 0) + 1
            groups.setdefault(key, [])
        else:
            groups.setdefault(key, []).append(r)
    alarmed = {key: sum(1 for r in rs if r.get("alarms")) for key, rs in groups.items()}
    columns = ("experiment", "source → target", "method", "seeds", "target test acc", "source val acc", "diverged")
    columns += ("alarms",) if any(alarmed.values()) else ()  # runs that blew up with finite losses (train/alarms.py)
    table = Table(title="da_framework results (accuracy, mean ± std over seeds)")
    for col in columns:
        table.add_column(col, justify="right" if "acc" in col or col in ("seeds", "diverged", "alarms") else "left")

    def fmt(values: list[float]) -> str:
        if not values:
            return "–"
        m = statistics.fmean(values)
        return f"{m:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{m:.3f}"

    for (name, src, tgt, method), rs in groups.items():
        table.add_row(
            escape(name), escape(f"{src} → {tgt}"), escape(method), str(len(rs)),
            fmt([r["metrics"]["target_test_accuracy"] for r in rs]),
            fmt([r["metrics"]["source_val_accuracy"] for r in rs]),
            str(diverged.get((name, src, tgt, method), 0)),
            *((str(alarmed[(name, src, tgt, method)]),) if "alarms" in columns else ()),
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
        table.add_row(*(f"{r[c]:.4g}" if isinstance(r.get(c), float) else escape(r.get(c, "")) for c in columns))
    return table


@app.command(name="list")
def list_() -> None:
    """Show the methods, losses, domains, models, experiments and projects that exist."""
    from da_framework.experiment_files import experiment_names, project_names
    from da_framework.data.registry import domain_entries
    from da_framework.losses.registry import loss_specs
    from da_framework.models.registry import BACKBONES
    from da_framework.train.method import PRESETS
    from da_framework.train.schedules import SCHEDULES

    t = Table(title="methods (presets; or write 'cross_entropy + 0.5*mmd' etc.)")
    t.add_column("method"), t.add_column("loss terms")
    for name, spec in PRESETS.items():
        t.add_row(name, escape(spec))
    console.print(t)
    t = Table(title="losses")
    for col in ("loss", "description", "hyper-parameters", "reference"):
        t.add_column(col, overflow="fold")
    for s in loss_specs():
        t.add_row(s.name, escape(s.description), escape(", ".join(f"{k}={v!r}" for k, v in s.hparams.items())), escape(s.reference))
    console.print(t)
    t = Table(title="weight schedules (term@schedule)")
    t.add_column("schedule"), t.add_column("multiplier at progress p")
    for name, (_, desc) in SCHEDULES.items():
        t.add_row(name, escape(desc))
    console.print(t)
    t = Table(title="domains")
    t.add_column("domain"), t.add_column("description"), t.add_column("data")
    for d in domain_entries():
        t.add_row(d.name, escape(d.description), _data_origin(d))
    console.print(t)
    t = Table(title="models")
    t.add_column("model"), t.add_column("description")
    for name, (_, desc) in BACKBONES.items():
        t.add_row(name, escape(desc))
    console.print(t)
    console.print("experiments (configs): " + (", ".join(experiment_names()) or "none found in ./experiments"))
    projects = ", ".join(project_names()) or "none found in ./projects"
    console.print(f"projects (programs with their own run()): {projects}")


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
