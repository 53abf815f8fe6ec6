"""The `da` command line."""

import json

from typer.testing import CliRunner

from da_framework.cli import app

runner = CliRunner()
FAST = ["--steps", "3", "--set", "model_kwargs={'channels': (4, 8), 'dense': 32}", "--set", "batch_size=8", "--set", "log_every=1"]


def test_list_shows_methods_losses_domains():
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0, r.output
    for word in ("source_only", "dann", "mmd", "digits/rotate", "lenet", "Ganin"):
        assert word in r.output


def test_run_writes_results_and_skips_finished(tmp_path):
    args = ["run", "digits_rotate", "-m", "source_only,dann", "--seed", "0", "--results-dir", str(tmp_path), *FAST]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 2
    rec = json.loads(files[0].read_text())
    assert {"config", "seed", "metrics", "versions", "platform", "git_commit"} <= set(rec)
    assert rec["config"]["steps"] == 3 and rec["versions"]["jax"]
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 0 and r2.output.count("skip (done)") == 2


def test_unknown_names_give_one_line_errors(tmp_path):
    r = runner.invoke(app, ["run", "digits_rotate", "-m", "danny", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "unknown loss 'danny'" in r.output and "valid losses" in r.output
    r = runner.invoke(app, ["run", "no_such_experiment"])
    assert r.exit_code == 2 and "valid experiments" in r.output
    r = runner.invoke(app, ["run", "digits_rotate", "--set", "stepz=3"])
    assert r.exit_code == 2 and "valid keys" in r.output
    assert not list(tmp_path.rglob("*.json"))


def test_records_name_their_cpu_model_as_proc_cpuinfo_does():
    """Bitwise reproduction depends on the CPU model (XLA:CPU kernels differ), so records keep it."""
    from pathlib import Path

    from da_framework.results import platform_info

    cpu = platform_info()["cpu"]
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
        assert names and cpu == names[0]
    else:
        assert isinstance(cpu, str) and cpu
