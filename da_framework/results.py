"""Run records: one JSON file per run with everything needed to reproduce it.

A record holds the resolved config, the seed, the final metrics, the training history,
package versions, the platform and the project's git commit.  Files are written
atomically (temporary file + rename), so a killed run never leaves a half-written result,
and a finished run is never redone unless asked.

A record is reused only for the config that made it.  :func:`config_hash` fingerprints
everything in a config that changes the result (not paths, logging or data-loading
threads; the method is hashed as its resolved terms, so ``"dann"`` and
``"cross_entropy + 1.0*dann"`` are the same run); :func:`check_record` compares a record
found on disk with the config about to run and raises :class:`RecordMismatchError`
naming the differing keys.  :func:`claim` takes an exclusive lock on a record path, so
two processes sharing a results folder never run (or overwrite) the same run twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax

from da_framework.config import ConfigError, ExperimentConfig, from_dict
from da_framework.errors import UserError
from da_framework.xla_cpu import current_xla_flags

RUN_FORMAT = "da_framework.run/1"  # a finished run
DIVERGED_FORMAT = "da_framework.diverged/1"  # a run whose loss became non-finite

# Config keys that do not change a run's result: where files go, how often metrics are
# fetched, how data is read.  Everything else is part of the config hash.
NON_SEMANTIC_KEYS = frozenset({"name", "data_dir", "checkpoint_every", "checkpoint_dir", "log_every", "device_prefetch", "data_workers", "data_threads"})
# Config keys added after records were first written, with the value that reproduces the old
# behaviour: hashed only when set to something else, so older records keep their hash.
LATER_KEYS: dict[str, Any] = {"trainer": "auto", "bottleneck_norm": "layer", "lr_multipliers": {}, "momentum": 0.9, "eval_target_val": False,
                              "eval_validators": False, "forward_target": True,
                              "source_augment": ""}


class RecordError(UserError):
    """A record file that cannot be read, or is not a record."""


class RecordMismatchError(RecordError):
    """A record on disk was made by a different config than the one about to run."""


def semantic_config(config: ExperimentConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The part of ``config`` that changes the result (no seed: see :func:`config_hash`),
    with the method as its resolved terms and ``extra`` (e.g. a federated config) under
    ``"extra."`` keys."""
    from da_framework.train.method import parse_method

    out = {k: v for k, v in config.to_dict().items() if k not in NON_SEMANTIC_KEYS and k != "seed"}
    for key, old in LATER_KEYS.items():
        if out.get(key) == old:
            del out[key]
    try:
        out["method"] = parse_method(config.method).spec()
    except UserError:  # a loss this version no longer has: keep the spelling
        pass
    for k, v in (extra or {}).items():
        out[f"extra.{k}"] = v
    return json.loads(json.dumps(out))


def config_hash(config: ExperimentConfig, extra: Mapping[str, Any] | None = None) -> str:
    """A 12-hex-digit fingerprint of :func:`semantic_config`.

    The seed is not part of it: a run is identified by (config hash, seed), so the seeds of
    one config share a folder.
    """
    text = json.dumps(semantic_config(config, extra), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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


def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``; elsewhere ``platform.processor()``), or ``"unknown"``.

    XLA:CPU generates different kernels for different CPUs, so a bitwise reproduction is only
    expected on the same CPU model: records keep it.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def platform_info() -> dict[str, Any]:
    """Python, OS, CPU architecture and model, ``$XLA_FLAGS``, and the JAX backend and devices."""
    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "system": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "xla_flags": current_xla_flags(),
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
    """The JSON-serialisable record of one finished run (with its ``alarms``, if any:
    :func:`da_framework.train.alarms.record_alarms`)."""
    from da_framework.train.alarms import record_alarms

    record = {
        "format": RUN_FORMAT,
        "config": config.to_dict(),
        "config_hash": config_hash(config),
        "seed": config.seed,
        "metrics": metrics,
        "history": history,
        "wall_time_s": wall_time_s,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        "platform": platform_info(),
        "git_commit": PROCESS_GIT_COMMIT,
        **({"input_files": files} if (files := input_files(config)) else {}),
    }
    if alarms := record_alarms(record):
        record["alarms"] = alarms
    return record


@functools.lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str | None:
    """The SHA-256 of a file's contents (cached by path, size and mtime), None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def input_files(config: ExperimentConfig) -> dict[str, dict[str, str | None]]:
    """The files outside the config that a run reads and its config names only by path
    (``model_kwargs.pretrained``), with their contents' SHA-256: a record is reused only
    while they hold the same bytes."""
    path = dict(config.model_kwargs).get("pretrained")
    return {"model_kwargs.pretrained": {"path": str(path), "sha256": file_sha256(path)}} if path else {}


def make_diverged_record(config: ExperimentConfig, error: Exception, wall_time_s: float, **extra: Any) -> dict[str, Any]:
    """The record of a run whose loss became non-finite: :func:`make_record` without metrics,
    in format :data:`DIVERGED_FORMAT`, with the error message.  Rerunning the same config and
    seed diverges again, so it is a result: resumed runs skip it (``--force`` retries)."""
    record = make_record(config, {}, [], wall_time_s)
    record.update(format=DIVERGED_FORMAT, status="diverged", error=str(error), **extra)
    return record


def slug(text: str) -> str:
    """A file-name-safe version of a method spec or domain name (never ``.``/``..``)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_").lstrip(".") or "run"


def result_path(root: Path, config: ExperimentConfig) -> Path:
    """Where ``da run`` writes a run's record:
    ``<root>/<experiment>/<method>/cfg-<config hash>/seed<seed>.json``.

    The config hash in the path makes runs of different configs (another ``--steps``,
    ``--set lr=...``) different files, so none overwrites another.
    """
    path = root / slug(config.name) / slug(config.method) / f"cfg-{config_hash(config)}" / f"seed{config.seed}.json"
    if not path.resolve().is_relative_to(root.resolve()):  # slug() makes this impossible; keep it so
        raise UserError(f"record path {path} would lie outside the results folder {root}")
    return path


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
    """Reads a run record.

    Raises:
      RecordError: if the file is not valid JSON or not a record (the message names the
        file and says to delete it or rerun with ``--force``).
    """
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"record {path} cannot be read ({type(e).__name__}: {e}); delete it or rerun with --force") from e
    if not isinstance(record, dict) or not str(record.get("format", "")).startswith("da_framework."):
        raise RecordError(f"{path} is not a da_framework record (no 'format' field); delete it or rerun with --force")
    return record


def check_record(record: Mapping[str, Any], path: Path, config: ExperimentConfig, extra: Mapping[str, Any] | None = None) -> None:
    """Checks that a record found at ``path`` was made by ``config`` (and ``extra``, e.g. a
    federated config), so that it may be reused in place of running ``config``.

    Raises:
      RecordMismatchError: naming the keys whose values differ and how to proceed.
    """
    try:
        was = semantic_config(from_dict(record["config"]), record.get("fed_config"))
    except (KeyError, TypeError, ConfigError) as e:
        raise RecordMismatchError(f"record {path} has a config this version cannot read ({e}); move it away or rerun with --force") from None
    now = semantic_config(config, extra)
    was["seed"], now["seed"] = record["config"].get("seed"), config.seed
    diffs = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    if not diffs:
        recorded, current = record.get("input_files", {}), input_files(config)
        for key in sorted(set(recorded) | set(current)):
            old_hash, new_hash = recorded.get(key, {}).get("sha256"), current.get(key, {}).get("sha256")
            if old_hash != new_hash:
                file = current.get(key, recorded.get(key, {})).get("path")
                raise RecordMismatchError(
                    f"record {path} was made from {key} {file} with sha256 {str(old_hash)[:12]}, that file now has "
                    f"{str(new_hash)[:12] if new_hash else 'gone missing'}; restore the file, or delete the record (or --force) to rerun"
                )
    if diffs:
        shown = "; ".join(f"{k}: record {was.get(k)!r}, now {now.get(k)!r}" for k in diffs[:4])
        raise RecordMismatchError(
            f"record {path} was made by a different config ({shown}{'; ...' if len(diffs) > 4 else ''}); "
            "use another --results-dir (or sweep name) to keep both, or delete the record to replace it"
        )


@contextlib.contextmanager
def claim(path: Path) -> Iterator[bool]:
    """An exclusive lock on the run whose record is ``path``: yields True if this process
    holds it, False if another process is running that run right now.

    The lock is ``flock`` on a hidden ``.<record>.lock`` file beside the record, released
    when the block ends or the process dies (a killed worker leaves no stale claim).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


MIN_FREE_BYTES = 16 * 2**20


def check_writable(root: Path) -> None:
    """Fails before any training if ``root`` cannot take result files (not writable, or
    under 16 MiB free), instead of after the first run's training."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"results folder {root} is not writable ({e.strerror or e}); pass --results-dir with a writable folder") from None
    free = shutil.disk_usage(root).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"results folder {root} has only {free / 2**20:.1f} MiB free; free some space or pass another --results-dir")
