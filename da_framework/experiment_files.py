"""Experiment and project files: where they live, how they are found, imported and checked.

``experiments/<name>.py`` holds configs (``get_config() -> dict``, validated into an
:class:`~da_framework.config.ExperimentConfig`); ``projects/<name>.py`` holds programs with
their own ``run()`` (weight transfer, detection, federated).  A bare name is looked up in
``experiments/`` first, then ``projects/``; errors are one line naming the file and the fix.
"""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from da_framework.config import ConfigError, ExperimentConfig, from_dict


_REPO = Path(__file__).resolve().parent.parent


def experiments_dir() -> Path:
    """The ``experiments/`` folder (configs): ``$PWD/experiments`` if present, else the repo's."""
    here = Path.cwd() / "experiments"
    return here if here.is_dir() else _REPO / "experiments"


def projects_dir() -> Path:
    """The ``projects/`` folder (programs with their own ``run()``): ``$PWD/projects`` if
    present, else the repo's."""
    here = Path.cwd() / "projects"
    return here if here.is_dir() else _REPO / "projects"


def _names_in(d: Path) -> list[str]:
    """Stems of the ``.py`` files directly in ``d`` (none starting with ``_``)."""
    return sorted(p.stem for p in d.glob("*.py") if not p.name.startswith("_")) if d.is_dir() else []


def experiment_names() -> list[str]:
    """Names of the experiment (config) files found in :func:`experiments_dir`."""
    return _names_in(experiments_dir())


def project_names() -> list[str]:
    """Names of the project (program) files found in :func:`projects_dir`."""
    return _names_in(projects_dir())


_EXPERIMENT_FORM = (
    "experiments are Python files (experiments/<name>.py) defining get_config() -> dict, e.g. "
    "'def get_config(): return {\"method\": \"dann\", \"steps\": 1000}'"
)


def experiment_path(name_or_path: str) -> Path:
    """Resolves a name (``experiments/<name>.py``, else ``projects/<name>.py``) or a path
    (anything with a suffix) to an existing file.

    Raises:
      ConfigError: if there is no such file (the message lists known experiments and
        projects and where it looked) or it is not a ``.py`` file.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = experiments_dir() / f"{name_or_path}.py"
        if not path.is_file() and (projects_dir() / f"{name_or_path}.py").is_file():
            path = projects_dir() / f"{name_or_path}.py"
    if path.suffix != ".py" and path.is_file():
        raise ConfigError(f"experiment file {path} is not a Python file; {_EXPERIMENT_FORM}")
    if not path.is_file():
        raise ConfigError(
            f"unknown experiment {name_or_path!r}; valid experiments: {', '.join(experiment_names()) or 'none found'}"
            f"; projects: {', '.join(project_names()) or 'none found'}"
            f" (looked in {experiments_dir()} and {projects_dir()})"
        )
    return path


def check_placement(path: Path, module: Any) -> None:
    """Refuses a program among the configs and a config among the projects.

    Raises:
      ConfigError: if ``path`` lies directly in :func:`experiments_dir` and its module
        defines ``run``, or lies directly in :func:`projects_dir` and defines none.
    """
    folder = path.resolve().parent
    if folder == experiments_dir().resolve() and hasattr(module, "run"):
        raise ConfigError(
            f"experiment file {path} defines run(): programs belong in projects/ "
            f"(move it to {projects_dir() / path.name}); experiments/ holds configs defining get_config() only"
        )
    if folder == projects_dir().resolve() and not hasattr(module, "run"):
        raise ConfigError(
            f"project file {path} defines no run(): a project defines run(); configs go in experiments/ "
            f"(move it to {experiments_dir() / path.name})"
        )


def _error_in(path: Path, error: Exception, kind: str = "experiment") -> ConfigError:
    """A one-line ConfigError for ``error`` raised by ``kind`` file ``path``: the file, the
    line of ``path`` the error came from and the error (the caller chains the original)."""
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).resolve() == path.resolve():
        line, message = error.lineno, error.msg
    else:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        line, message = (frames[-1].lineno if frames else None), str(error)
    where = f"{kind} file {path}" + (f", line {line}" if line else "")
    message = " ".join(message.split()) or "(no message)"
    return ConfigError(f"{where}: {type(error).__name__}: {message}")


def import_python_file(path: Path, module_name: str, kind: str = "experiment") -> Any:
    """Imports ``path`` as a module (experiment, sweep and plugin files).

    Raises:
      ConfigError: one line with the file, the line and the error if importing fails (a
        syntax error, an exception); the original exception is chained as ``__cause__``.
    """
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{kind} file {path} cannot be imported; it must be a Python (.py) file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise _error_in(path, e, kind) from e
    return module


def call_in_file(path: Path, fn: Any, kind: str = "experiment") -> Any:
    """Calls ``fn()`` (a function defined in ``path``), turning an exception it raises into
    the one-line ConfigError of :func:`import_python_file`."""
    try:
        return fn()
    except Exception as e:
        raise _error_in(path, e, kind) from e


def load_experiment_module(name_or_path: str) -> Any:
    """Imports an experiment or project file as a module (it defines ``get_config``; a
    project also ``run``).

    Raises:
      ConfigError: if the file is missing or not a ``.py`` file, importing it fails (a
        syntax error, an exception: one line with the file, the line and the error; the
        original exception is chained as ``__cause__``), or it is in the wrong folder
        (:func:`check_placement`).
    """
    path = experiment_path(name_or_path)
    module = import_python_file(path, f"da_experiment_{path.stem}")
    check_placement(path, module)
    return module


def load_experiment(name_or_path: str) -> ExperimentConfig:
    """Loads an experiment (or a project's config) by name (``experiments/<name>.py``,
    ``projects/<name>.py``) or by file path.

    Raises:
      ConfigError: if the file does not exist (the message lists known experiments), is not a
        Python file, fails to import, has no ``get_config``, whose ``get_config()`` raises or
        returns no dict, or returns unknown keys or invalid values.
    """
    path = experiment_path(name_or_path)
    module = load_experiment_module(name_or_path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"experiment file {path} must define get_config() -> dict")
    values = call_in_file(path, module.get_config)
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"get_config() of experiment file {path} must return a dict of config keys, got "
            f"{type(values).__name__}; {_EXPERIMENT_FORM}"
        )
    values = dict(values)
    values.setdefault("name", path.stem)
    return from_dict(values)
