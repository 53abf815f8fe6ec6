"""Local Flower runtimes for ``da fed --engine flower-sim`` and the tests: a SuperLink, SuperNodes,
``flwr run`` as processes on loopback, started, waited for and stopped; see
:mod:`da_framework.federated.flower`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np

try:
    import tomli_w
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Flower adapter needs flwr>=1.42: pip install 'da_framework[fed]'") from e

from da_framework.config import ExperimentConfig
from da_framework.errors import UserError
from da_framework.federated.config import FedConfig
from da_framework.federated.simulation import FederatedError

from da_framework.federated.flower import RUN_CONFIG_DEFAULTS, _toml_value, write_app  # noqa: E402
from da_framework.federated.flower_strategy import (  # noqa: E402
    _num_classes, task_dict,
)

# --------------------------------------------------------------------------- local runtimes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: str | Path, **extra: str) -> dict[str, str]:
    """The environment for Flower processes: ``FLWR_HOME`` (its config and installed apps),
    telemetry and update checks off, JAX on CPU unless set, and a JAX compilation cache in
    ``FLWR_HOME/jax_cache`` unless set (each ClientApp is a new process; from the second
    round on it loads the compiled client update instead of compiling it)."""
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(flwr_home) / "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    env.update(extra)
    return env


def write_connection(flwr_home: str | Path, name: str, address: str) -> Path:
    """Writes ``FLWR_HOME/config.toml`` with one insecure SuperLink connection ``name``."""
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: {"address": address, "insecure": True}}}))
    return path


def write_run_config(path: str | Path, config: ExperimentConfig, fed: FedConfig, out_dir: str | Path, **settings: Any) -> Path:
    """Writes the ``--run-config`` TOML of a run (``task``, ``out-dir`` and any of
    :data:`RUN_CONFIG_DEFAULTS`' other keys, given with ``_`` for ``-``)."""
    values: dict[str, Any] = {"task": json.dumps(task_dict(config, fed)), "out-dir": str(out_dir)}
    for k, v in settings.items():
        key = k.replace("_", "-")
        if key not in RUN_CONFIG_DEFAULTS:
            raise UserError(f"unknown Flower run-config key {key!r}; keys: {', '.join(RUN_CONFIG_DEFAULTS)}")
        values[key] = type(RUN_CONFIG_DEFAULTS[key])(v)
    Path(path).write_text(tomli_w.dumps(values))
    return Path(path)


def _bin(name: str) -> str:
    """The Flower executable ``name`` beside this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _wait_http(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Waits until the SuperLink on ``port`` answers ``/health``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise FederatedError(f"flower-superlink exited with code {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise FederatedError(f"flower-superlink did not answer on 127.0.0.1:{port} within {timeout:.0f}s: {_tail(log)}")


def _tail(path: Path, n: int = 600) -> str:
    """The last ``n`` characters of a log, on one line."""
    try:
        return " ".join(path.read_text(errors="replace")[-n:].split())
    except OSError:
        return f"(no log at {path})"


def start_superlink(flwr_home: str | Path, port: int, log: str | Path, simulation: bool = False) -> subprocess.Popen:
    """Starts ``flower-superlink --insecure`` on 127.0.0.1:``port`` in its own process group
    (stop it with :func:`stop_process`) and waits until it answers."""
    cmd = [_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
           "--host", "127.0.0.1", "--port", str(port)]
    if simulation:
        cmd.append("--simulation")
    log = Path(log)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=flower_env(flwr_home), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(port, proc, 60.0, log)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def start_supernode(
    flwr_home: str | Path, superlink: str, partition_id: int, num_partitions: int, log: str | Path,
    runtime_port: int | None = None, node_config: dict[str, Any] | None = None,
) -> subprocess.Popen:
    """Starts ``flower-supernode --insecure`` for client ``partition_id`` (own process group)."""
    cfg = {"partition-id": partition_id, "num-partitions": num_partitions, **(node_config or {})}
    cmd = [_bin("flower-supernode"), "--insecure", "--superlink", superlink,
           "--node-config", " ".join(f"{k}={_toml_value(v)}" for k, v in cfg.items()),
           "--port", str(runtime_port or free_port())]
    with Path(log).open("w") as f:
        return subprocess.Popen(cmd, env=flower_env(flwr_home), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(*procs: subprocess.Popen, grace: float = 5.0) -> None:
    """Stops processes started here with their process groups: SIGTERM to all, up to
    ``grace`` seconds for them to exit, then SIGKILL to whatever is left in the groups."""
    def signal_group(p: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    for p in procs:
        if p.poll() is None:
            signal_group(p, signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:  # children (SuperExec, ServerApp/ClientApp processes) share the group
        signal_group(p, signal.SIGKILL)
    for p in procs:
        if p.poll() is None:
            p.wait(timeout=grace)


def flwr_run(
    app_dir: str | Path, connection: str, run_config: str | Path, flwr_home: str | Path,
    federation_config: dict[str, Any] | None = None, timeout: float = 120.0,
) -> int:
    """``flwr run APP_DIR CONNECTION --run-config RUN_CONFIG``; returns the run id."""
    cmd = [_bin("flwr"), "run", str(app_dir), connection, "--run-config", str(run_config), "--format", "json"]
    if federation_config:
        cmd += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
    p = subprocess.run(cmd, env=flower_env(flwr_home), capture_output=True, text=True, timeout=timeout, check=False)
    try:
        payload = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError:
        payload = {}
    if p.returncode != 0 or not payload.get("success"):
        raise FederatedError(f"flwr run failed (exit {p.returncode}): {' '.join((p.stdout + p.stderr).split())[-600:]}")
    return int(payload["run-id"])


def run_status(connection: str, run_id: int, flwr_home: str | Path) -> tuple[str, str]:
    """``(status, details)`` of a run from ``flwr ls`` (e.g. ``("finished:failed", "...")``)."""
    cmd = [_bin("flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"]
    p = subprocess.run(cmd, check=False,
                       env=flower_env(flwr_home), capture_output=True, text=True, timeout=60)
    try:
        runs = json.loads(p.stdout[p.stdout.index("{"):]).get("runs", [])
    except ValueError:
        return "unknown", " ".join((p.stdout + p.stderr).split())[-300:]
    return (str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))) if runs else ("unknown", "")


def run_log(connection: str, run_id: int, flwr_home: str | Path) -> str:
    """The run's logs so far (``flwr log RUN_ID CONNECTION --show``)."""
    cmd = [_bin("flwr"), "log", str(run_id), connection, "--show"]
    p = subprocess.run(cmd, check=False, env=flower_env(flwr_home),
                       capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def wait_for_result(
    out_dir: str | Path, timeout: float, connection: str | None = None, run_id: int | None = None,
    flwr_home: str | Path | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Waits for the ServerApp's ``result.json`` to say completed (returns it) or failed
    (raises :class:`FederatedError` with its one-line error); ``on_round`` sees each new round.
    With ``connection``/``run_id``, a run that Flower reports finished without a result
    (the ServerApp could not even start) fails at once with Flower's details."""
    path = Path(out_dir) / "result.json"
    end = time.monotonic() + timeout
    seen, last_check = 0, time.monotonic()
    while time.monotonic() < end:
        res: dict[str, Any] = {}
        if path.exists():
            try:
                res = json.loads(path.read_text())
            except (OSError, ValueError):
                res = {}
        for h in res.get("history", [])[seen:]:
            if on_round is not None:
                on_round(h)
            seen += 1
        if res.get("status") == "completed":
            return res
        if res.get("status") == "failed":
            raise FederatedError(f"the Flower run failed: {res.get('error', 'no error recorded')}")
        if connection and run_id is not None and time.monotonic() - last_check > 30:
            last_check = time.monotonic()
            status, details = run_status(connection, run_id, flwr_home or "")
            if status.startswith("finished") and not path.exists():
                raise FederatedError(f"Flower run {run_id} ended ({status}) without a result: {details}")
        time.sleep(0.25)
    raise FederatedError(f"the Flower run did not finish within {timeout:.0f}s (see {out_dir})")


@contextmanager
def _workdir(keep: str | Path | None) -> Iterator[Path]:
    """``keep`` (created) or a temporary directory removed afterwards."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    d = tempfile.mkdtemp(prefix="da_flower_")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_flower_simulation(
    config: ExperimentConfig, fed: FedConfig, on_round: Callable[[int, dict[str, Any]], None] | None = None,
    timeout: float = 3600.0, workdir: str | Path | None = None, num_cpus_per_client: int = 1,
) -> Any:
    """Runs the experiment with ``flwr run`` on Flower's simulation runtime (a local
    ``flower-superlink --simulation``, Ray backend, ``fed.num_clients`` virtual SuperNodes);
    returns a :class:`~da_framework.federated.runner.FedResult` like :func:`run_federated`'s.
    The SuperLink and everything it started are stopped before returning."""
    from da_framework.federated.runner import FedResult, make_clients

    start = time.perf_counter()
    clients = make_clients(config, fed)  # validates the partition and names the clients for the record
    with _workdir(workdir) as wd:
        home, out = wd / "flwr_home", wd / "out"
        shutil.rmtree(out, ignore_errors=True)
        port = free_port()
        write_connection(home, "da-sim", f"127.0.0.1:{port}")
        app = write_app(wd / "app")
        run_toml = write_run_config(wd / "run.toml", config, fed, out)
        link = start_superlink(home, port, wd / "superlink.log", simulation=True)
        try:
            run_id = flwr_run(app, "da-sim", run_toml, home, {
                "num-supernodes": fed.num_clients, "client-resources-num-cpus": int(num_cpus_per_client), "client-resources-num-gpus": 0.0,
            })
            res = wait_for_result(out, timeout, "da-sim", run_id, home,
                                  None if on_round is None else (lambda h: on_round(int(h["round"]), h)))
            saved = out / "global.npz"
            history = res["history"]
            if workdir is not None:  # kept for inspection
                (wd / "run.log").write_text(run_log("da-sim", run_id, home))
        finally:
            stop_process(link)
        from da_framework.federated.runner import init_global_params, local_training

        spec = local_training(config, fed, _num_classes(fed, config.data_dir))
        template = jax.eval_shape(lambda: init_global_params(config, fed.replace(pretrain_steps=0), spec, clients[0].data["image"].shape[1:]))
        params = load_global(saved, template)
    final = {k: v for k, v in history[-1].items() if k.startswith(("test_accuracy", "target_test"))}
    return FedResult(final, history, params, clients, time.perf_counter() - start)


def load_global(path: str | Path, template: Any) -> Any:
    """The parameters a ServerApp saved in ``global.npz``, shaped like ``template``."""
    npz = np.load(path)
    leaves, treedef = jax.tree.flatten(template)
    if len(npz.files) != len(leaves):
        raise FederatedError(f"{path} holds {len(npz.files)} arrays but the model has {len(leaves)}: it was saved for another model")
    return jax.tree.unflatten(treedef, [np.asarray(npz[f"arr_{i}"]) for i in range(len(leaves))])


