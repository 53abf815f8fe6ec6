"""`da bench --launcher`: every launcher writes the records `local` writes, no record twice,
and a worker killed mid-run is retried."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from da_framework.bench.launchers import LauncherError, Outcome, default_runner, launch
from da_framework.bench.sweep import expand_sweep
from da_framework.cli import app
from da_framework.results import claim

TINY = {"steps": 4, "model": "mlp", "model_kwargs": {"hidden": (32,)}, "bottleneck_dim": 16, "batch_size": 16, "log_every": 2}
SWEEP = {"name": "t", "base": TINY, "methods": ["source_only", "dann"], "pairs": [("digits/source", "digits/rotate")], "seeds": [0, 1]}
SAME = ("config", "config_hash", "metrics", "history", "selection", "analysis", "hparams")


def logged_runner(log: str, run):
    """Appends ``<pid> <record path>`` to ``log`` before training (a record written twice
    would show up twice)."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {run.path}\n")
    return default_runner(run)


def dying_runner(marker_dir: str, run, only: str = ""):
    """Kills its own process the first time it sees a run (mid-run: after the claim) whose
    path contains ``only``, trains normally on the retry."""
    marker = Path(marker_dir) / (Path(run.path).parent.parent.name + Path(run.path).stem)
    if only in str(run.path) and not marker.exists():
        marker.touch()
        os._exit(17)
    return default_runner(run)


def _records(root: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(root.rglob("seed*.json")):
        r = json.loads(p.read_text())
        out[str(p.relative_to(root))] = {k: r.get(k) for k in SAME}
    return out


def _diff(got: dict, want: dict) -> list[str]:
    """``record: field`` for every field that differs (for a readable failure)."""
    out = [f"{k}: missing" for k in want if k not in got] + [f"{k}: extra" for k in got if k not in want]
    return out + [f"{k}: {f}" for k in want if k in got for f in SAME if got[k][f] != want[k][f]]


@pytest.fixture(scope="module")
def local_records(tmp_path_factory):
    """The sweep's records from ``da bench`` with the default local launcher, in a fresh
    process as a user runs it (this test process simulates 4 CPU devices, which changes
    XLA:CPU's rounding; workers, like a user's ``da bench``, see one)."""
    root = tmp_path_factory.mktemp("local")
    sweep_file = root / "t.py"
    sweep_file.write_text(f"def get_sweep():\n    return {SWEEP!r}\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "da_framework.cli", "bench", str(sweep_file), "--results-dir", str(root)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    records = _records(root)
    assert len(records) == 4
    return records


def test_multi_device_workers_write_the_local_records_once_each(tmp_path, local_records):
    log = tmp_path / "log.txt"
    outcomes: list[Outcome] = []
    attempts = launch("multi-device", expand_sweep(SWEEP, tmp_path), outcomes.append,
                      runner=functools.partial(logged_runner, str(log)), workers=2)
    assert attempts == 1
    assert not _diff(_records(tmp_path), local_records)
    started = log.read_text().split("\n")[:-1]
    paths = [line.split()[1] for line in started]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == 4  # each run trained exactly once
    assert len({line.split()[0] for line in started}) == 2  # by two worker processes
    assert sorted(o.status for o in outcomes) == ["done"] * 4


def test_a_run_claimed_elsewhere_is_left_to_its_holder(tmp_path):
    runs = expand_sweep({**SWEEP, "methods": ["source_only"], "seeds": [0]}, tmp_path)
    outcomes: list[Outcome] = []
    with claim(runs[0].path) as mine:
        assert mine
        attempts = launch("multi-device", runs, outcomes.append, retries=1)
    assert attempts == 2 and not runs[0].path.exists()  # tried twice, never trained: another holder has it
    assert outcomes == []  # skipped runs are not reported as finished


def test_a_killed_multi_device_worker_is_replaced_and_its_run_retried(tmp_path, local_records):
    runs = [r for r in expand_sweep(SWEEP, tmp_path) if r.config.method == "source_only" and r.config.seed == 0]
    outcomes: list[Outcome] = []
    attempts = launch("multi-device", runs, outcomes.append, runner=functools.partial(dying_runner, str(tmp_path)), retries=2)
    assert attempts == 2  # the first worker died mid-run (exit 17); the second trained the run
    assert [o.status for o in outcomes] == ["failed", "done"] and "exit code(s) 17" in outcomes[0].error
    want = {k: v for k, v in local_records.items() if "/source_only/" in k and k.endswith("seed0.json")}
    assert not _diff(_records(tmp_path), want)


def test_ray_cluster_gives_the_local_records_and_retries_a_killed_worker(tmp_path, local_records):
    ray = pytest.importorskip("ray")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's runner, by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcomes: list[Outcome] = []
        attempts = launch("ray", expand_sweep(SWEEP, tmp_path), outcomes.append,
                          runner=functools.partial(dying_runner, str(tmp_path), only="dann/default/seed1"), retries=2, num_cpus=1)
    finally:
        ray.shutdown()
    assert attempts == 1  # Ray reran each task whose worker died; no second pass needed
    assert sorted(o.status for o in outcomes) == ["done"] * 4
    assert [p.name for p in tmp_path.glob("*seed*")] == ["dannseed1"]  # that run's first attempt died
    assert not _diff(_records(tmp_path), local_records)


@pytest.mark.slow
def test_submitit_local_cluster_gives_the_local_records(tmp_path, local_records):
    pytest.importorskip("submitit")
    outcomes: list[Outcome] = []
    launch("slurm", expand_sweep(SWEEP, tmp_path), outcomes.append, cluster="local", results_dir=tmp_path)
    assert sorted(o.status for o in outcomes) == ["done"] * 4
    assert not _diff(_records(tmp_path), local_records)


def test_bad_launcher_options_are_one_line_errors(tmp_path):
    runs = expand_sweep(SWEEP, tmp_path)
    with pytest.raises(LauncherError, match="unknown launcher 'gpu'; valid launchers: local, multi-device, ray, slurm"):
        launch("gpu", runs, print)
    with pytest.raises(LauncherError, match="option.s. workers do not apply to --launcher ray"):
        launch("ray", runs, print, workers=2)
    cli = CliRunner()
    for args, message in [
        (["--launcher", "nope"], "unknown launcher 'nope'"),
        (["--launcher", "ray", "--workers", "2"], "--workers do not apply to --launcher ray"),
        (["--launcher", "local", "--slurm-partition", "gpu"], "--slurm-partition do not apply to --launcher local"),
        (["--launcher", "ray", "--vmap-seeds"], "--vmap-seeds / --vmap-samples run with --launcher local only"),
    ]:
        result = cli.invoke(app, ["bench", "digits_default", "--results-dir", str(tmp_path), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_parallel_launchers_start_one_run_of_every_program_first(tmp_path):
    from da_framework.bench.launchers import interleave_programs

    runs = expand_sweep({**SWEEP, "seeds": [0, 1, 2]}, tmp_path)  # methods x seeds, seeds innermost
    order = [(Path(r.path).parent.parent.name, Path(r.path).stem) for r in interleave_programs(runs)]
    assert order == [("source_only", "seed0"), ("dann", "seed0"), ("source_only", "seed1"), ("dann", "seed1"),
                     ("source_only", "seed2"), ("dann", "seed2")]
    assert sorted(map(str, (r.path for r in interleave_programs(runs)))) == sorted(str(r.path) for r in runs)
    assert interleave_programs(runs[:1]) == runs[:1] and interleave_programs([]) == []
