"""`da bench` sweeps: expansion, resumability after a kill, and `da reproduce` match/mismatch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from da_framework.bench.reproduce import compare_metrics
from da_framework.bench.sweep import expand_sweep, validate_sweep
from da_framework.cli import app
from da_framework.config import ConfigError, ExperimentConfig
from da_framework.results import make_record, write_json_atomic
from da_framework.train import train

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model_kwargs": {"channels": (4, 8), "dense": 32}, "bottleneck_dim": 16, "batch_size": 16, "log_every": 2}


def _sweep(**extra):
    return {"name": "t", "base": {"steps": 4, **TINY}, "methods": ["source_only", "dann"],
            "pairs": [("digits/source", "digits/rotate")], "seeds": [0, 1], **extra}


def test_expand_sweep_paths_and_configs(tmp_path):
    runs = expand_sweep(_sweep(grid={"learning_rate": [1e-3, 1e-2]}, checkpoint_every=2), tmp_path)
    assert len(runs) == 2 * 2 * 2
    assert len({r.path for r in runs}) == 8
    r = runs[-1]
    assert r.config.method == "dann" and r.config.seed == 1 and r.config.learning_rate == 1e-2
    assert r.path == tmp_path / "t" / "digits_source__digits_rotate" / "dann" / "learning_rate=0.01" / "seed1.json"
    assert r.config.checkpoint_every == 2 and ".checkpoints" in r.config.checkpoint_dir


def test_loss_weight_grid_rewrites_the_method_and_keeps_baselines_once(tmp_path):
    sweep = _sweep(grid={"weight:dann": [0.1, 3], "learning_rate": [1e-3]})
    runs = expand_sweep(sweep, tmp_path)
    # source_only has no dann term: one run per seed, not one per weight
    base = [r for r in runs if r.sweep_method == "source_only"]
    assert len(base) == 2 and all(r.config.method == "source_only" for r in base)
    assert base[0].path.parent.name == "learning_rate=0.001" and base[0].hparams == {"learning_rate": 1e-3}
    dann = [r for r in runs if r.sweep_method == "dann"]
    assert len(dann) == 2 * 2 and len({r.path for r in dann}) == 4
    assert sorted({r.config.method for r in dann}) == ["cross_entropy + 0.1*dann", "cross_entropy + 3.0*dann"]
    assert all(r.config.learning_rate == 1e-3 for r in runs)
    assert dann[-1].hparams == {"weight:dann": 3, "learning_rate": 1e-3}
    assert dann[-1].path.parent.parent.name == "dann"  # grouped under the sweep's method name


def test_loss_hyperparameter_grid_sets_the_term_hparams(tmp_path):
    sweep = {**_sweep(), "methods": ["source_only", "mdd"], "grid": {"mdd.margin": [2.0, 4.0], "weight:mdd": [0.5]}}
    runs = expand_sweep(sweep, tmp_path)
    assert len(runs) == 2 + 2 * 2  # source_only once per seed; mdd at 2 margins x 2 seeds
    specs = sorted({r.config.method for r in runs if r.sweep_method == "mdd"})
    assert specs == ["cross_entropy + 0.5*mdd(margin=2.0)", "cross_entropy + 0.5*mdd(margin=4.0)"]
    from da_framework.train.method import parse_method

    term = parse_method(specs[0]).terms[1]
    assert term.weight == 0.5 and dict(term.hparams) == {"margin": 2.0}


def test_a_sweep_over_several_sources_and_targets_selects_on_the_mean_over_domains(tmp_path):
    """A pair of 2 sources and 2 targets: one record whose selection accuracies are the means over
    domains, i.e. the headline metrics the training loop computes per domain."""
    import numpy as np

    from da_framework.bench.sweep import run_one

    sweep = {**_sweep(), "methods": ["dann"], "seeds": [0],
             "pairs": [(["digits/source", "digits/blur"], "digits/rotate,digits/invert")]}
    (run,) = expand_sweep(sweep, tmp_path)
    assert run.config.source_names == ("digits/source", "digits/blur")
    assert run.config.target_names == ("digits/rotate", "digits/invert")
    assert run.path.parent.parent.parent.name == "digits_source_digits_blur__digits_rotate_digits_invert"
    record = run_one(run)
    m, sel = record["metrics"], record["selection"]
    assert sel["source_val_accuracy"] == pytest.approx(m["source_val_accuracy"], abs=1e-9)
    assert sel["target_oracle_accuracy"] == pytest.approx(m["target_test_accuracy"], abs=1e-9)
    per_target = [m["target_test_accuracy/digits/rotate"], m["target_test_accuracy/digits/invert"]]
    assert sel["target_oracle_accuracy"] == pytest.approx(np.mean(per_target), abs=1e-9)
    assert per_target[0] != per_target[1]  # the mean is over two different numbers
    with pytest.raises(ConfigError, match="each side must be a domain name"):
        validate_sweep({**sweep, "pairs": [(["digits/source", 3], "digits/rotate")]})


@pytest.mark.parametrize(("bad", "message"), [
    ({"methodz": []}, "unknown sweep key"), ({"seeds": []}, "non-empty 'seeds'"),
    ({"base": {"stepz": 1}}, "unknown config key 'stepz'"), ({"grid": {"seed": [1]}}, "must not set seed"),
    ({"grid": {"weight:coral": [1.0]}}, "no method of the sweep has a term keyed 'coral'; term keys in its methods: cross_entropy, dann"),
    ({"grid": {"weight:dann": ["big"]}}, "must list numbers"),
    ({"grid": {"dann.margin": [1.0]}}, "loss 'dann' has no hyper-parameter 'margin'; valid: gamma, max_coeff"),
])
def test_bad_sweeps_name_the_problem(bad, message):
    with pytest.raises(ConfigError, match=message):
        validate_sweep({**_sweep(), **bad})


def _write_sweep(path: Path) -> Path:
    sweep = _sweep(checkpoint_every=2)
    sweep["base"]["steps"] = 12
    path.write_text(f"def get_sweep():\n    return {sweep!r}\n")
    return path


def _bench(sweep: Path, results: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "da_framework.cli", "bench", str(sweep), "--results-dir", str(results)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _records(results: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(results.rglob("*.json")):
        if ".checkpoints" not in p.parts:
            r = json.loads(p.read_text())
            out[str(p.relative_to(results))] = {"metrics": r["metrics"], "selection": r["selection"], "history": r["history"]}
    return out


@pytest.mark.slow
def test_killed_sweep_restarted_equals_uninterrupted(tmp_path):
    sweep = _write_sweep(tmp_path / "sweep.py")
    killed = tmp_path / "killed"
    proc = _bench(sweep, killed)
    deadline = time.time() + 600
    while time.time() < deadline and not list(killed.rglob("seed*.json")):
        time.sleep(0.2)
    assert proc.poll() is None, "sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-sweep: the second run is in progress
    proc.wait()
    done_at_kill = len(list(killed.rglob("seed*.json")))
    assert 1 <= done_at_kill < 4
    assert _bench(sweep, killed).wait() == 0  # restart: skips finished runs
    clean = tmp_path / "clean"
    assert _bench(sweep, clean).wait() == 0
    assert len(_records(clean)) == 4
    assert _records(killed) == _records(clean)


def test_compare_metrics_hand_cases():
    assert compare_metrics({"a": 1.0, "b": [0.5, float("nan")]}, {"a": 1.0, "b": [0.5, float("nan")]}) == []
    diffs = compare_metrics({"a": 1.0, "b": [0.5]}, {"a": 1.0 + 1e-9, "c": 2})
    assert diffs == ["a: recorded 1.0, rerun 1.000000001 (diff +1e-09)", "b[0]: only in recorded", "c: only in rerun"]
    assert compare_metrics({"a": 1.0}, {"a": 1.0 + 1e-9}, atol=1e-6) == []
    # differences in step order: history[2] is listed before history[10] (not string order)
    rec = {"history": [{"loss": float(i)} for i in range(12)]}
    new = {"history": [{"loss": float(i) + (i in (2, 10))} for i in range(12)]}
    assert [d.split(":")[0] for d in compare_metrics(rec, new)] == ["history[2].loss", "history[10].loss"]


def test_reproduce_detects_match_and_mismatch(tmp_path):
    """Also the determinism test: the same config and seed give bitwise identical metrics and history."""
    cfg = ExperimentConfig(method="dann", steps=3, eval_every=2, **TINY)
    res = train(cfg)
    path = tmp_path / "run.json"
    write_json_atomic(path, make_record(cfg, res.metrics, res.history, res.wall_time_s))
    runner = CliRunner()
    r = runner.invoke(app, ["reproduce", str(path)])
    assert r.exit_code == 0 and "MATCH" in r.output and "MISMATCH" not in r.output, r.output
    rec = json.loads(path.read_text())
    rec["metrics"]["target_test_accuracy"] += 0.01
    path.write_text(json.dumps(rec))
    r = runner.invoke(app, ["reproduce", str(path)])
    assert r.exit_code == 1 and "MISMATCH" in r.output and "target_test_accuracy" in r.output, r.output


@pytest.mark.slow  # CI time; the same property is covered faster elsewhere
def test_bench_vmap_seeds_option_writes_every_seed(tmp_path):
    sweep = _sweep()
    sweep["methods"], sweep["base"]["steps"] = ["dan"], 2
    path = tmp_path / "s.py"
    path.write_text(f"def get_sweep():\n    return {sweep!r}\n")
    r = CliRunner().invoke(app, ["bench", str(path), "--results-dir", str(tmp_path / "res"), "--vmap-seeds"])
    assert r.exit_code == 0, r.output
    recs = sorted((tmp_path / "res").rglob("seed*.json"))
    assert [p.name for p in recs] == ["seed0.json", "seed1.json"]
    rec = json.loads(recs[1].read_text())
    assert rec["seed"] == 1 and rec["config"]["seed"] == 1 and rec["runner"].startswith("vmap_seeds")
    assert {"selection", "analysis", "metrics"} <= set(rec)
    r = CliRunner().invoke(app, ["bench", str(path), "--results-dir", str(tmp_path / "res"), "--vmap-seeds"])
    assert r.exit_code == 0 and "2 already done" in r.output


def test_bench_vmap_samples_option_gives_the_separate_runs_records(tmp_path):
    """A learning-rate x loss-weight grid (4 runs) as one program equals the plain sweep."""
    sweep = {**_sweep(grid={"learning_rate": [1e-3, 1e-2], "weight:mmd": [0.5, 2.0]}), "methods": ["dan"], "seeds": [0]}
    sweep["base"] = {**sweep["base"], "steps": 3}
    path = tmp_path / "s.py"
    path.write_text(f"def get_sweep():\n    return {sweep!r}\n")
    r = CliRunner().invoke(app, ["bench", str(path), "--results-dir", str(tmp_path / "one"), "--vmap-samples", "0"])
    assert r.exit_code == 0 and "4 runs of dan (one program)" in r.output, r.output
    r = CliRunner().invoke(app, ["bench", str(path), "--results-dir", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    one = sorted((tmp_path / "one").rglob("seed*.json"))
    assert len(one) == 4
    for p in one:
        got, ref = json.loads(p.read_text()), json.loads((tmp_path / "plain" / p.relative_to(tmp_path / "one")).read_text())
        assert got["runner"] == "vmap_samples(k=4, unroll)" and got["config"] == ref["config"]
        for h_g, h_r in zip(got["history"], ref["history"]):
            assert h_g.keys() == h_r.keys()
            if "loss" in h_r:
                np.testing.assert_allclose(h_g["loss"], h_r["loss"], rtol=1e-4, err_msg=str(p))
        assert abs(got["metrics"]["target_test_accuracy"] - ref["metrics"]["target_test_accuracy"]) <= 1 / 180 + 1e-12
    # da reproduce reruns such a record alone: bitwise equal or, with the note, within a tolerance
    for p in one[:2]:
        r = CliRunner().invoke(app, ["reproduce", str(p)])
        assert r.exit_code == 0 or (r.exit_code == 1 and "trained together with others in one program" in r.output), r.output
        r = CliRunner().invoke(app, ["reproduce", str(p), "--atol", "1e-4"])
        assert r.exit_code == 0 and "MATCH" in r.output, r.output
    r = CliRunner().invoke(app, ["bench", str(path), "--results-dir", str(tmp_path / "one"), "--vmap-samples", "0",
                                 "--vmap-seeds"])
    assert r.exit_code == 2 and "--vmap-samples already groups seeds" in r.output


def test_diverging_grid_point_is_recorded_skipped_on_resume_and_reported(tmp_path):
    """A non-finite loss does not stop the sweep: the run gets a diverged record, not a crash."""
    from da_framework.bench.report import write_report
    from da_framework.bench.sweep import DIVERGED_FORMAT, pending, run_or_record_divergence

    sweep = {**_sweep(), "methods": ["dann"], "seeds": [0], "grid": {"learning_rate": [1e-2, 1e9]}}
    sweep["base"] = {**sweep["base"], "steps": 6, "log_every": 2}
    runs = expand_sweep(sweep, tmp_path)
    records = [run_or_record_divergence(r) for r in runs]
    assert records[0]["format"].startswith("da_framework.run") and records[0]["metrics"]
    bad = json.loads(runs[1].path.read_text())
    assert bad["format"] == DIVERGED_FORMAT and "non-finite loss" in bad["error"]
    assert bad["hparams"] == {"learning_rate": 1e9}
    assert pending(runs) == []  # a resumed sweep skips it: same config and seed diverge again
    write_report(tmp_path / "t")
    md = (tmp_path / "t" / "report.md").read_text()
    assert "### Diverged runs" in md and "| dann @ learning_rate=1000000000.0 | digits/source→rotate | 0 | non-finite loss at step" in md


def test_rmnist_domainbed_sweep_leaves_each_environment_and_each_pair_out(tmp_path, monkeypatch):
    from da_framework.bench.sweep import load_sweep

    monkeypatch.setenv("DA_DG_STEPS", "50")
    monkeypatch.setenv("DA_DG_SAMPLES", "2")
    monkeypatch.setenv("DA_DG_ALGORITHMS", "ERM,IRM")
    sweep = load_sweep("rmnist_domainbed")
    assert sweep["name"] == "rmnist_domainbed_steps50_samples2"
    runs = expand_sweep(sweep, tmp_path)
    assert len(runs) == 2 * (6 + 15) * 3 * 2  # algorithms x (main + leave-one-out pairs) x trials x samples
    envs = {f"rmnist/{a}" for a in (0, 15, 30, 45, 60, 75)}
    for r in runs:
        targets = r.config.target_names
        assert len(targets) in (1, 2) and len(r.config.source_names) == 6 - len(targets)
        assert set(r.config.source_names) | set(targets) == envs and not set(targets) & set(r.config.source_names)
    assert sum(len(r.config.target_names) == 2 for r in runs) == 2 * 15 * 3 * 2
    assert {r.config.steps for r in runs} == {50} and {r.config.model for r in runs} == {"mnist_cnn"}
    assert all(r.config.eval_target_val for r in runs)


def test_a_reduced_domainbed_sweep_from_the_environment(tmp_path, monkeypatch):
    from da_framework.bench.sweep import load_sweep
    from da_framework.config import ConfigError

    for k, v in {"DA_DG_STEPS": "40", "DA_DG_SAMPLES": "1", "DA_DG_ALGORITHMS": "ERM,VREx", "DA_DG_SEEDS": "3",
                 "DA_DG_LEAVE_ONE_OUT": "0"}.items():
        monkeypatch.setenv(k, v)
    runs = expand_sweep(load_sweep("cmnist_domainbed"), tmp_path)
    assert len(runs) == 2 * 3  # algorithms x main runs only, one trial, one sample
    assert {r.config.seed for r in runs} == {3} and all(len(r.config.target_names) == 1 for r in runs)
    monkeypatch.setenv("DA_DG_SEEDS", "0,x")
    with pytest.raises(ConfigError, match="DA_DG_SEEDS must be comma-separated integers"):
        load_sweep("cmnist_domainbed")


def test_domainbed_test_envs_keep_their_main_runs_and_every_leave_one_out_pair_they_need(tmp_path, monkeypatch):
    from da_framework.bench.domainbed import domainbed_pairs
    from da_framework.bench.sweep import load_sweep
    from da_framework.config import ConfigError

    pairs = domainbed_pairs("rmnist", test_envs=["0", "75"])
    # main runs of 0 and 75; leave-one-out pairs {t, v} with t or v in {0, 75}: 15 - C(4, 2) = 9
    assert [t for _, t in pairs[:2]] == ["rmnist/0", "rmnist/75"] and len(pairs) == 2 + 9
    for sources, target in pairs:
        held = target.split(",")
        assert {"rmnist/0", "rmnist/75"} & set(held) and not set(sources) & set(held) and len(sources) == 6 - len(held)
    assert pairs == [p for p in domainbed_pairs("rmnist") if {"rmnist/0", "rmnist/75"} & set(p[1].split(","))]
    for k, v in {"DA_DG_STEPS": "40", "DA_DG_SAMPLES": "1", "DA_DG_ALGORITHMS": "ERM", "DA_DG_SEEDS": "0",
                 "DA_DG_LEAVE_ONE_OUT": "0", "DA_DG_TEST_ENVS": "-90%, +90%"}.items():
        monkeypatch.setenv(k, v)
    sweep = load_sweep("cmnist_domainbed")
    assert sweep["name"] == "cmnist_domainbed_steps40_samples1"  # the full sweep's folder: records join it
    assert [r.config.target_names for r in expand_sweep(sweep, tmp_path)] == [("cmnist/+90%",), ("cmnist/-90%",)]
    monkeypatch.setenv("DA_DG_TEST_ENVS", "+90%,90")
    with pytest.raises(ConfigError, match=r"cmnist has no test environment 90; valid: \+90%, \+80%, -90%"):
        load_sweep("cmnist_domainbed")


def test_domainbed_fixed_batch_size_lets_an_algorithms_samples_share_one_program(tmp_path, monkeypatch):
    from da_framework.bench.sweep import load_sweep
    from da_framework.bench.vmap_samples import differing, sample_groups
    from da_framework.config import ConfigError

    for k, v in {"DA_DG_STEPS": "40", "DA_DG_SAMPLES": "3", "DA_DG_ALGORITHMS": "ERM,IRM", "DA_DG_SEEDS": "0,1",
                 "DA_DG_LEAVE_ONE_OUT": "0", "DA_DG_TEST_ENVS": "+90%"}.items():
        monkeypatch.setenv(k, v)
    sampled = expand_sweep(load_sweep("cmnist_domainbed"), tmp_path)
    assert len({r.config.batch_size for r in sampled}) > 1  # DomainBed's protocol samples it: no group of 12
    assert max(len(g) for g in sample_groups(sampled)) < 6
    monkeypatch.setenv("DA_DG_BATCH_SIZE", "32")
    sweep = load_sweep("cmnist_domainbed")
    assert sweep["name"] == "cmnist_domainbed_steps40_samples3_batch32"  # another protocol, another folder
    runs = expand_sweep(sweep, tmp_path)
    assert {r.config.batch_size for r in runs} == {32} and len(runs) == 2 * 3 * 2
    groups = sample_groups(runs)
    assert [len(g) for g in groups] == [6, 6]  # per algorithm: 3 samples x 2 trials
    assert differing([r.config for r in groups[1]]) == ["irm.irm_lambda", "irm.irm_penalty_anneal_iters", "learning_rate"]
    assert [len(g) for g in sample_groups(runs, 4)] == [4, 2, 4, 2]
    monkeypatch.setenv("DA_DG_BATCH_SIZE", "big")
    with pytest.raises(ConfigError, match="DA_DG_BATCH_SIZE must be a positive integer"):
        load_sweep("cmnist_domainbed")
