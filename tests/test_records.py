"""Records are reused only for the config that made them; bad input is one line; logs read well.

Regression tests of the audit (issue 13, sections 1, 3 and 4): each failed before its fix.
"""

import json
import subprocess
import sys
import textwrap
import time
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from da_framework.bench.sweep import check_done, expand_sweep
from da_framework.cli import app
from da_framework.config import ExperimentConfig
from da_framework.experiment_files import load_experiment
from da_framework.console import RunProgress
from da_framework.results import (
    RecordMismatchError,
    check_record,
    claim,
    config_hash,
    make_record,
    read_record,
    result_path,
    write_json_atomic,
)

runner = CliRunner()
TINY = ["--set", "model_kwargs={'channels': (4, 8), 'dense': 32}", "--set", "batch_size=8", "--set", "log_every=1"]


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("seed*.json"))]


# --- the config hash -------------------------------------------------------------------------


def test_config_hash_covers_what_changes_a_result_and_nothing_else():
    base = ExperimentConfig()
    h = config_hash(base)
    for changed in ({"steps": 501}, {"learning_rate": 0.02}, {"model_kwargs": {"dense": 32}}, {"method": "dann"},
                    {"target": "digits/scale"}, {"compute_dtype": "bfloat16"}, {"num_devices": 2}):
        assert config_hash(base.replace(**changed)) != h, changed
    for same in ({"log_every": 7}, {"name": "x"}, {"data_dir": "/d"}, {"data_workers": 2}, {"device_prefetch": 0}, {"seed": 3}):
        assert config_hash(base.replace(**same)) == h, same
    # a preset and its spelled-out terms are one run
    assert config_hash(base.replace(method="dann")) == config_hash(base.replace(method="cross_entropy + 1.0*dann"))


def test_check_record_names_the_differing_keys(tmp_path):
    cfg = ExperimentConfig(steps=5)
    record = make_record(cfg, {"target_test_accuracy": 0.5}, [], 1.0)
    check_record(record, tmp_path / "r.json", cfg)  # same config: fine
    check_record(record, tmp_path / "r.json", cfg.replace(log_every=1))  # logging is not semantic
    with pytest.raises(RecordMismatchError, match=r"steps: record 5, now 30"):
        check_record(record, tmp_path / "r.json", cfg.replace(steps=30))
    with pytest.raises(RecordMismatchError, match="seed"):
        check_record(record, tmp_path / "r.json", cfg.replace(seed=1))


def test_result_path_stays_inside_the_results_dir(tmp_path):
    for name in ("..", "../..", "/etc", ".hidden", "a/../../b"):
        path = result_path(tmp_path, ExperimentConfig(name=name))
        assert path.resolve().is_relative_to(tmp_path.resolve()), (name, path)
        assert ".." not in path.relative_to(tmp_path).parts


# --- da run ----------------------------------------------------------------------------------


def test_da_run_reuses_a_record_only_for_its_own_config_and_never_overwrites(tmp_path):
    args = ["run", "digits_rotate", "--results-dir", str(tmp_path), *TINY]
    r = runner.invoke(app, [*args, "--steps", "2"])
    assert r.exit_code == 0, r.output
    first = sorted(tmp_path.rglob("seed0.json"))
    assert len(first) == 1
    before = first[0].read_text()

    r = runner.invoke(app, [*args, "--steps", "3"])  # another config: trains, does not report the 2-step result
    assert r.exit_code == 0, r.output
    assert "skip (done)" not in r.output
    assert sorted(rec["config"]["steps"] for rec in _records(tmp_path)) == [2, 3]

    r = runner.invoke(app, [*args, "--steps", "3", "--set", "learning_rate=0.02"])  # a --set change too
    assert r.exit_code == 0 and "skip (done)" not in r.output
    assert len(_records(tmp_path)) == 3

    r = runner.invoke(app, [*args, "--steps", "3", "--force"])  # --force reruns exactly that config's record
    assert r.exit_code == 0, r.output
    assert first[0].read_text() == before  # the 2-step record is untouched
    r = runner.invoke(app, [*args, "--steps", "2"])
    assert r.exit_code == 0 and r.output.count("skip (done)") == 1


def test_da_run_refuses_a_record_of_another_config_at_its_path(tmp_path):
    cfg = load_experiment("digits_rotate").replace(steps=2)
    path = result_path(tmp_path, cfg)
    write_json_atomic(path, make_record(cfg.replace(steps=7), {"target_test_accuracy": 0.9}, [], 1.0))  # tampered
    r = runner.invoke(app, ["run", "digits_rotate", "--steps", "2", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "different config" in r.output and "steps: record 7, now 2" in r.output


def test_diverged_runs_in_a_batch_are_recorded_and_the_batch_goes_on(tmp_path):
    args = ["run", "digits_rotate", "--seeds", "2", "--steps", "3", "--set", "learning_rate=1e12", "--results-dir", str(tmp_path), *TINY]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    records = _records(tmp_path)
    assert [rec["status"] for rec in records] == ["diverged", "diverged"] and records[0]["format"] == "da_framework.diverged/1"
    assert r.output.count("diverged:") == 2
    r = runner.invoke(app, args)  # a resumed batch skips them (same config, same seed: same divergence)
    assert r.exit_code == 0 and r.output.count("skip (done)") == 2


def test_divergence_names_the_first_non_finite_step():
    from da_framework.train.loop import NonFiniteLossError, train

    with pytest.raises(NonFiniteLossError, match=r"at step ([1-9]) \(seen at the metric fetch of step 20\)"):
        train(ExperimentConfig(steps=20, log_every=20, learning_rate=1e12, batch_size=8, model_kwargs={"channels": (4, 8), "dense": 32}))


def test_a_run_claimed_by_another_process_is_skipped(tmp_path):
    cfg = load_experiment("digits_rotate").replace(steps=2)
    path = result_path(tmp_path, cfg)
    with claim(path) as mine, claim(path) as theirs:  # flock: a second claim fails even in-process
        assert mine and not theirs
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from da_framework.results import claim
        with claim(Path({str(path)!r})) as ok:
            print(ok, flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        r = runner.invoke(app, ["run", "digits_rotate", "--steps", "2", "--results-dir", str(tmp_path)])
        assert r.exit_code == 0 and "running in another process" in r.output
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
    with claim(path) as mine:  # a killed holder leaves no stale claim
        assert mine


def test_custom_run_experiments_refuse_options_they_do_not_take(tmp_path):
    r = runner.invoke(app, ["run", "digits_transfer_wider", "--set", "steps=3", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "takes no --set" in r.output
    r = runner.invoke(app, ["run", "digits_transfer_wider", "-m", "dann", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "takes no --method" in r.output
    assert not list(tmp_path.rglob("*.json"))


# --- da fed, da reproduce --------------------------------------------------------------------


def test_da_fed_refuses_an_experiment_without_fed_config(tmp_path):
    r = runner.invoke(app, ["fed", "digits_rotate", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "no FED_CONFIG" in r.output and "fed_digits_transfer" in r.output
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.slow
def test_da_reproduce_reruns_a_federated_record_as_federated(tmp_path):
    fast = ["--rounds", "1", "--set", "pretrain_steps=2", "--set", "num_clients=2", "--set", "clients_per_round=2",
            "--set", "model_kwargs={'channels': (4, 8), 'dense': 32}", "--results-dir", str(tmp_path)]
    r = runner.invoke(app, ["fed", "fed_digits_transfer", *fast])
    assert r.exit_code == 0, r.output
    (path,) = tmp_path.rglob("seed0.json")
    r = runner.invoke(app, ["reproduce", str(path)])
    assert r.exit_code == 0 and "rerunning federated" in r.output and "MATCH" in r.output, r.output
    r = runner.invoke(app, ["fed", "fed_digits_transfer", *fast])  # the same configs: reused
    assert r.exit_code == 0 and "skip (done)" in r.output
    r = runner.invoke(app, ["fed", "fed_digits_transfer", *fast[:-2], "--set", "client_lr=0.01", fast[-2], fast[-1]])
    assert r.exit_code == 0 and "skip (done)" not in r.output and len(list(tmp_path.rglob("seed0.json"))) == 2


def test_da_reproduce_of_a_diverged_record_expects_the_divergence(tmp_path):
    args = ["run", "digits_rotate", "--steps", "3", "--set", "learning_rate=1e12", "--results-dir", str(tmp_path), *TINY]
    assert runner.invoke(app, args).exit_code == 0
    (path,) = tmp_path.rglob("seed0.json")
    r = runner.invoke(app, ["reproduce", str(path)])
    assert r.exit_code == 0 and "diverged again with the recorded error" in r.output, r.output


# --- da bench --------------------------------------------------------------------------------


def _sweep(steps: int) -> dict:
    return {"name": "s", "base": {"steps": steps, "batch_size": 8}, "methods": ["source_only"],
            "pairs": [("digits/source", "digits/rotate")], "seeds": [0]}


def test_edited_sweep_base_does_not_reuse_old_records(tmp_path):
    (run,) = expand_sweep(_sweep(3), tmp_path)
    write_json_atomic(run.path, make_record(run.config, {"target_test_accuracy": 0.5}, [], 1.0))
    check_done(expand_sweep(_sweep(3), tmp_path))  # unchanged sweep: its record counts
    with pytest.raises(RecordMismatchError, match=r"steps: record 3, now 4.*another --results-dir"):
        check_done(expand_sweep(_sweep(4), tmp_path))
    sweep_file = tmp_path / "edited.py"
    sweep_file.write_text(f"def get_sweep():\n    return {_sweep(4)!r}\n")
    r = runner.invoke(app, ["bench", str(sweep_file), "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "different config" in r.output
    assert read_record(run.path)["config"]["steps"] == 3  # nothing overwritten


# --- one-line input errors -------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["bench", "digits_default", "--max-runs", "-1"], "max-runs"),
    (["run", "digits_rotate", "--seeds", "-1"], "seeds"),
    (["run", "digits_rotate", "--steps", "0"], "steps"),
    (["reproduce", "x.json", "--atol", "-1"], "atol"),
    (["run", "digits_rotate", "-m", ""], "--method is empty"),
])
def test_out_of_range_options_are_refused(args, words, tmp_path):
    r = runner.invoke(app, [*args, "--results-dir", str(tmp_path)] if args[0] != "reproduce" else args)
    assert r.exit_code == 2 and words in r.output, r.output
    assert not list(tmp_path.rglob("*.json"))


def test_corrupt_records_are_one_line_errors(tmp_path):
    cfg = load_experiment("digits_rotate").replace(steps=2)
    path = result_path(tmp_path, cfg)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "da_framework.run/1", "config": ')  # a truncated file
    r = runner.invoke(app, ["run", "digits_rotate", "--steps", "2", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "cannot be read" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["reproduce", str(path)])
    assert r.exit_code == 2 and "cannot be read" in r.output
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    r = runner.invoke(app, ["reproduce", str(other)])
    assert r.exit_code == 2 and "not a da_framework record" in r.output


def test_an_unwritable_results_dir_fails_before_training(tmp_path, monkeypatch):
    import da_framework.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("trained before checking the results dir"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = runner.invoke(app, ["run", "digits_rotate", "--results-dir", str(blocker / "results")])
    assert r.exit_code == 2 and "not writable" in r.output


def test_report_refuses_an_unknown_metric_and_lists_non_records(tmp_path):
    cfg = ExperimentConfig(name="r", steps=2)
    for seed in (0, 1):
        c = cfg.replace(seed=seed)
        write_json_atomic(result_path(tmp_path, c), make_record(c, {"target_test_accuracy": 0.5, "source_val_accuracy": 0.6}, [], 1.0))
    r = runner.invoke(app, ["report", str(tmp_path), "--metric", "bogus"])
    assert r.exit_code == 2 and "unknown metric 'bogus'" in r.output and "target_test_accuracy" in r.output
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "broken.json").write_text("{")
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "notes.json" in r.output and "broken.json" in r.output
    assert "2 JSON file(s) under this folder are not run records" in (tmp_path / "report.md").read_text()


def test_square_brackets_in_errors_are_printed(tmp_path):
    r = runner.invoke(app, ["run", "digits_rotate", "--set", "source=mnist", "--set", "target=mnist",
                            "--set", f"data_dir={tmp_path}", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "pip install 'da_framework[tf]'" in r.output, r.output


def test_bugs_are_not_disguised_as_input_errors(tmp_path, monkeypatch):
    import da_framework.train.loop as loop

    def buggy(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(loop, "train", buggy)
    r = runner.invoke(app, ["run", "digits_rotate", "--steps", "2", "--results-dir", str(tmp_path)])
    assert r.exit_code == 1 and isinstance(r.exception, ValueError) and "error:" not in r.output


def test_debug_shows_the_traceback_of_an_input_error(tmp_path):
    r = runner.invoke(app, ["--debug", "run", "digits_rotate", "-m", "1.0.0*mmd", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" in r.output and "error:" in r.output


# --- output read in logs ---------------------------------------------------------------------


def test_tables_and_paths_are_not_cut_when_not_a_terminal(tmp_path):
    method = "cross_entropy + 0.5*mmd(estimator='unbiased')"
    r = runner.invoke(app, ["run", "digits_rotate", "--steps", "2", "-m", method, "--results-dir", str(tmp_path), *TINY])
    assert r.exit_code == 0, r.output
    (path,) = tmp_path.rglob("seed0.json")
    assert method in r.output and str(path) in r.output  # one piece each: no ellipsis, no line break
    assert "[1/1] start digits_rotate" in r.output  # plain progress lines


def test_plain_progress_prints_lines_at_the_interval():
    out = StringIO()
    console = Console(file=out, width=4000, force_terminal=False)
    with RunProgress(console, 2, interval_s=0.0) as progress:
        on_log = progress.start("a | dann | seed 0", 10)
        time.sleep(0.01)
        on_log(5, {"loss": 1.25})
        on_log(10, {"loss": 1.0})  # the last step is not a progress line: done() reports it
        progress.done("a: target acc 0.500")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/2] start a | dann | seed 0 (10 steps)"
    assert lines[1].startswith("[1/2] a | dann | seed 0: step 5/10 loss 1.250 (elapsed 0:00:00, eta ")
    assert lines[2] == "[1/2] a: target acc 0.500" and len(lines) == 3


def test_a_broken_sweep_file_is_one_line(tmp_path):
    bad = tmp_path / "bad_sweep.py"
    bad.write_text("def get_sweep():\n    return {'name': 's',\n")
    r = runner.invoke(app, ["bench", str(bad), "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and f"sweep file {bad}, line" in r.output and "SyntaxError" in r.output and "Traceback" not in r.output
    bad.write_text("def get_sweep():\n    return 1 / 0\n")
    r = runner.invoke(app, ["bench", str(bad), "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and f"sweep file {bad}, line 2: ZeroDivisionError" in r.output


def test_a_record_is_reused_only_while_its_weights_file_holds_the_same_bytes(tmp_path):
    import hashlib

    from da_framework.results import RecordMismatchError, check_record

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"first weights")
    config = ExperimentConfig(model="resnet18", model_kwargs={"pretrained": str(weights)})
    record = make_record(config, {"target_test_accuracy": 0.5}, [], 1.0)
    assert record["input_files"] == {"model_kwargs.pretrained": {"path": str(weights), "sha256": hashlib.sha256(b"first weights").hexdigest()}}
    check_record(record, tmp_path / "r.json", config)  # same bytes: reusable
    time.sleep(0.01)
    weights.write_bytes(b"other weights")
    with pytest.raises(RecordMismatchError, match=r"made from model_kwargs.pretrained .*w.safetensors with sha256 [0-9a-f]{12}, that file now has [0-9a-f]{12}"):
        check_record(record, tmp_path / "r.json", config)
    weights.unlink()
    with pytest.raises(RecordMismatchError, match="gone missing"):
        check_record(record, tmp_path / "r.json", config)
    assert "input_files" not in make_record(ExperimentConfig(), {}, [], 1.0)  # no file read: no entry
