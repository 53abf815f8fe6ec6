"""Random hyper-parameter search: distributions, seeding, validation, sweep expansion and --plan."""

import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from da_framework.bench.search import parse_distribution, sample_point, search_points, validate_search
from da_framework.bench.sweep import expand_sweep, validate_sweep
from da_framework.cli import app
from da_framework.config import ConfigError

SPACE = {"learning_rate": "log10_uniform(-4.5, -2.5)", "irm.irm_penalty_anneal_iters": "int_log10_uniform(0, 4)",
         "batch_size": "int_pow2_uniform(3, 9)", "irm.irm_lambda": "choice([1.0, 10.0])"}


def test_a_sample_is_the_documented_generator_drawn_in_sorted_key_order():
    point = sample_point(SPACE, search_seed=7, sample=3, trial_seed=1, method="cross_entropy + irm")
    r = np.random.default_rng([7, 3, 1, zlib.crc32(b"cross_entropy + irm")])
    expected = {"batch_size": int(2 ** r.uniform(3, 9)), "irm.irm_lambda": [1.0, 10.0][int(r.integers(2))],
                "irm.irm_penalty_anneal_iters": int(10 ** r.uniform(0, 4)), "learning_rate": 10 ** r.uniform(-4.5, -2.5)}
    assert point == expected
    assert 10 ** -4.5 <= point["learning_rate"] <= 10 ** -2.5 and 8 <= point["batch_size"] <= 512


def test_sample_zero_is_the_defaults_and_samples_do_not_depend_on_each_other():
    search = validate_search({"samples": 4, "spaces": {"m": SPACE}}, ["m", "erm"])
    points = search_points(search, "m", trial_seed=0)
    assert [i for i, _ in points] == [0, 1, 2, 3] and points[0][1] == {}
    assert points[2][1] == sample_point(SPACE, 0, 2, 0, "m")  # independent of how many samples precede it
    assert search_points(search, "m", 1)[2][1] != points[2][1]  # another trial seed, another draw (DomainBed's seed_hash)
    assert search_points(search, "erm", 0) == [(0, {})]  # a method without a space runs once


@pytest.mark.parametrize("text, message", [
    ("log10_uniform(1)", "takes 2 argument"),
    ("normal(0, 1)", "unknown search distribution 'normal'"),
    ("uniform(2, 1)", "lower bound above upper"),
    ("uniform(a, 1)", "must be literals"),
    ("choice([])", "non-empty list"),
    ("uniform(0, 1", "not an expression"),
    ("uniform(low=0, high=1)", "positional"),
])
def test_bad_distributions_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_distribution(text)


def test_search_keys_are_checked_against_the_sweep():
    base = {"name": "s", "methods": ["cross_entropy + irm"], "pairs": [("digits/source", "digits/rotate")], "seeds": [0]}
    bad = [({"samples": 0}, "samples' must be an integer >= 1"),
           ({"samples": 2, "spaces": {"dann": {}}}, "not in the sweep's methods"),
           ({"samples": 2, "spaces": {"cross_entropy + irm": {"lr": "uniform(0, 1)"}}}, "no sweepable config key"),
           ({"samples": 2, "spaces": {"cross_entropy + irm": {"irm.nope": "uniform(0, 1)"}}}, "no hyper-parameter 'nope'"),
           ({"samples": 2, "spaces": {"cross_entropy + irm": {"seed": "uniform(0, 1)"}}}, "no sweepable config key"),
           ({"samples": 2, "typo": 1}, "unknown search key")]
    for search, message in bad:
        with pytest.raises(ConfigError, match=message):
            validate_sweep({**base, "search": search})
    with pytest.raises(ConfigError, match="also sets"):
        validate_sweep({**base, "grid": {"learning_rate": [0.1]},
                        "search": {"samples": 2, "spaces": {"cross_entropy + irm": {"learning_rate": "uniform(0, 1)"}}}})


def test_sampled_values_reach_the_config_the_method_and_the_path(tmp_path):
    sweep = {"name": "s", "base": {"steps": 3}, "methods": ["cross_entropy + irm", "source_only"],
             "pairs": [("digits/source", "digits/rotate")], "seeds": [0, 1],
             "search": {"samples": 3, "seed": 5, "spaces": {"cross_entropy + irm": {
                 "learning_rate": "log10_uniform(-3, -2)", "irm.irm_lambda": "log10_uniform(0, 2)"}}}}
    runs = expand_sweep(sweep, tmp_path)
    assert len(runs) == 3 * 2 + 2  # the baseline has no space: sample 0 only
    r = next(r for r in runs if r.path.parent.name == "sample2" and r.config.seed == 1)
    drawn = sample_point(sweep["search"]["spaces"]["cross_entropy + irm"], 5, 2, 1, "cross_entropy + irm")
    assert dict(r.hparams) == drawn and r.config.learning_rate == drawn["learning_rate"]
    assert r.config.method == f"cross_entropy + irm(irm_lambda={drawn['irm.irm_lambda']!r})"
    defaults = next(r for r in runs if r.path.parent.name == "sample0" and r.config.seed == 0)
    assert defaults.hparams == {} and defaults.config.learning_rate == 0.01 and defaults.config.method == "cross_entropy + irm"


def test_bench_plan_prints_every_run_and_trains_nothing(tmp_path):
    sweep_file = tmp_path / "tiny.py"
    sweep_file.write_text(
        "def get_sweep():\n"
        "    return {'name': 'tiny', 'base': {'steps': 2}, 'methods': ['cross_entropy + irm'],\n"
        "            'pairs': [('digits/source', 'digits/rotate')], 'seeds': [0],\n"
        "            'search': {'samples': 2, 'spaces': {'cross_entropy + irm': {'irm.irm_lambda': 'choice([3.0])'}}}}\n")
    out = CliRunner().invoke(app, ["bench", str(sweep_file), "--plan", "--results-dir", str(tmp_path / "res")])
    assert out.exit_code == 0, out.output
    assert "sample0" in out.output and '{"irm.irm_lambda": 3.0}' in out.output and "2 runs, 2 pending" in out.output
    assert not (tmp_path / "res" / "tiny").exists()


def test_vmap_seed_groups_split_seeds_whose_samples_differ(tmp_path):
    from da_framework.bench.sweep import seed_groups

    sweep = {"name": "s", "base": {"steps": 3}, "methods": ["cross_entropy + irm"], "pairs": [("digits/source", "digits/rotate")],
             "seeds": [0, 1], "search": {"samples": 2, "spaces": {"cross_entropy + irm": {"learning_rate": "uniform(0.001, 0.01)"}}}}
    groups = seed_groups(expand_sweep(sweep, tmp_path))
    assert sorted(len(g) for g in groups) == [1, 1, 2]  # sample 0 (the defaults) shares one program; sample 1 differs per trial
    for g in groups:
        assert len({(r.config.learning_rate, r.config.method) for r in g}) == 1


def test_per_trial_false_shares_a_samples_values_across_trials_so_seeds_vmap_together(tmp_path):
    from da_framework.bench.sweep import seed_groups

    space = {"learning_rate": "uniform(0.001, 0.01)"}
    sweep = {"name": "s", "base": {"steps": 3}, "methods": ["cross_entropy + irm"], "pairs": [("digits/source", "digits/rotate")],
             "seeds": [0, 1, 2], "search": {"samples": 3, "per_trial": False, "spaces": {"cross_entropy + irm": space}}}
    runs = expand_sweep(sweep, tmp_path)
    assert sorted(len(g) for g in seed_groups(runs)) == [3, 3, 3]
    r = np.random.default_rng([0, 2, zlib.crc32(b"cross_entropy + irm")])
    assert {x.config.learning_rate for x in runs if x.path.parent.name == "sample2"} == {r.uniform(0.001, 0.01)}
    with pytest.raises(ConfigError, match="per_trial' must be True or False"):
        validate_search({"samples": 2, "per_trial": "no"}, [])
