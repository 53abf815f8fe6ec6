"""experiments/ holds configs (get_config only), projects/ holds programs (with run()).

Name resolution (experiments/ first, then projects/), the one-line refusals of a file in
the wrong folder, and that the repository's own files are where they belong.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from da_framework.cli import app
from da_framework.config import ConfigError
from da_framework.experiment_files import experiment_path, experiments_dir, load_experiment, load_experiment_module, project_names, projects_dir

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
CONFIG = "def get_config():\n    return {'steps': 2}\n"
PROGRAM = CONFIG + "\ndef run(results_dir, seeds, steps):\n    return [{'ok': 1}]\n"


def _defines_run(path: Path) -> bool:
    """Whether the file binds ``run`` at top level (a def or an assignment), read without importing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "run":
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "run" for t in targets):
                return True
    return False


def _tree(tmp_path: Path, experiments: dict[str, str], projects: dict[str, str]) -> None:
    for folder, files in (("experiments", experiments), ("projects", projects)):
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / f"{name}.py").write_text(text)


def test_repository_experiments_are_configs_and_projects_are_programs():
    configs = sorted((ROOT / "experiments").glob("*.py"))
    programs = sorted((ROOT / "projects").glob("*.py"))
    assert configs and programs
    assert [p.name for p in configs if _defines_run(p)] == []
    assert [p.name for p in programs if not _defines_run(p)] == []


def test_bare_names_fall_back_to_the_repositorys_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ or projects/ here: the repository's are used
    assert experiments_dir() == ROOT / "experiments" and projects_dir() == ROOT / "projects"
    assert experiment_path("digits_rotate") == ROOT / "experiments" / "digits_rotate.py"
    assert experiment_path("digits_transfer_wider") == ROOT / "projects" / "digits_transfer_wider.py"
    assert "fed_digits_transfer" in project_names()


def test_names_resolve_in_experiments_first_then_projects(tmp_path, monkeypatch):
    _tree(tmp_path, {"both": CONFIG, "cfg": CONFIG}, {"both": PROGRAM, "prog": PROGRAM})
    monkeypatch.chdir(tmp_path)
    assert experiments_dir() == tmp_path / "experiments" and projects_dir() == tmp_path / "projects"
    assert experiment_path("both") == tmp_path / "experiments" / "both.py"
    assert experiment_path("cfg") == tmp_path / "experiments" / "cfg.py"
    assert experiment_path("prog") == tmp_path / "projects" / "prog.py"
    assert hasattr(load_experiment_module("prog"), "run")
    assert load_experiment("prog").steps == 2  # a project's get_config() (what `da fed` reads)
    other = tmp_path / "elsewhere.py"  # a path with a suffix is used as given, in no folder
    other.write_text(PROGRAM)
    assert experiment_path(str(other)) == other and hasattr(load_experiment_module(str(other)), "run")


def test_unknown_name_lists_experiments_and_projects_and_where_it_looked(tmp_path, monkeypatch):
    _tree(tmp_path, {"cfg": CONFIG}, {"prog": PROGRAM})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        experiment_path("nope")
    message = str(e.value)
    assert "\n" not in message
    assert "valid experiments: cfg" in message and "projects: prog" in message
    assert str(tmp_path / "experiments") in message and str(tmp_path / "projects") in message


def test_a_program_in_experiments_is_refused(tmp_path, monkeypatch):
    _tree(tmp_path, {"prog_here": PROGRAM}, {})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"defines run\(\): programs belong in projects/") as e:
        load_experiment_module("prog_here")
    assert "\n" not in str(e.value)
    r = runner.invoke(app, ["run", "prog_here", "--results-dir", str(tmp_path / "results")])
    assert r.exit_code == 2 and "programs belong in projects/" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_a_config_in_projects_is_refused(tmp_path, monkeypatch):
    _tree(tmp_path, {}, {"cfg_here": CONFIG})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"a project defines run\(\); configs go in experiments/") as e:
        load_experiment_module("cfg_here")
    assert "\n" not in str(e.value)
    r = runner.invoke(app, ["run", "cfg_here", "--results-dir", str(tmp_path / "results")])
    assert r.exit_code == 2 and "a project defines run(); configs go in experiments/" in r.output, r.output
    assert not (tmp_path / "results").exists()


def test_da_run_calls_a_projects_run_and_refuses_options_it_does_not_take(tmp_path, monkeypatch):
    _tree(tmp_path, {}, {"prog": PROGRAM})
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["run", "prog", "--results-dir", str(tmp_path / "results")])
    assert r.exit_code == 0 and "ok" in r.output, r.output
    r = runner.invoke(app, ["run", "prog", "--set", "steps=3", "--results-dir", str(tmp_path / "results")])
    assert r.exit_code == 2 and "project 'prog' defines its own run(), which takes no --set" in r.output, r.output


def test_da_list_shows_projects_apart_from_experiments(tmp_path, monkeypatch):
    _tree(tmp_path, {"cfg": CONFIG}, {"prog": PROGRAM})
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0, r.output
    assert "experiments (configs): cfg" in r.output and "projects (programs with their own run()): prog" in r.output
