"""Run records: one JSON file per run with everything needed to reproduce it.

A record holds the resolved config, the seed, the final metrics, the training history,
package versions, the platform and the project's git commit.  Files are written
atomically (temporary file + rename), so a killed run never leaves a half-written result,
and a finished run is never redone unless asked.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from da_framework.config import ExperimentConfig

PACKAGES = ("da_framework", "jax", "jaxlib", "flax", "optax", "chex", "numpy", "grain", "tensorflow-datasets", "orbax-checkpoint", "scikit-learn")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None if absent)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def platform_info() -> dict[str, Any]:
    """Python, OS, CPU architecture and the JAX backend and devices."""
    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "system": platform.platform(),
        "machine": platform.machine(),
        "jax_backend": jax.default_backend(),
        "devices": [d.device_kind for d in devices],
        "device_count": len(devices),
    }


def git_commit(path: Path | None = None) -> str | None:
    """The git commit of the project checkout (with ``+dirty`` if modified), or None."""
    where = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


# The commit of the code this process loaded: read once at import, so a commit made while a
# long sweep runs does not mislabel the runs that follow it.
PROCESS_GIT_COMMIT: str | None = git_commit()


def make_record(config: ExperimentConfig, metrics: dict[str, Any], history: list[dict[str, Any]], wall_time_s: float) -> dict[str, Any]:
    """The JSON-serialisable record of one finished run."""
    return {
        "format": "da_framework.run/1",
        "config": config.to_dict(),
        "seed": config.seed,
        "metrics": metrics,
        "history": history,
        "wall_time_s": wall_time_s,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        "platform": platform_info(),
        "git_commit": PROCESS_GIT_COMMIT,
    }


def slug(text: str) -> str:
    """A file-name-safe version of a method spec or domain name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "run"


def result_path(root: Path, config: ExperimentConfig) -> Path:
    """Where a run's record goes: ``<root>/<experiment>/<method>/seed<seed>.json``."""
    return root / slug(config.name) / slug(config.method) / f"seed{config.seed}.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Writes ``data`` as JSON to ``path`` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any]:
    """Reads a run record."""
    with open(path) as f:
        return json.load(f)
