"""Where the runs of a sweep execute: this process, one worker per local accelerator, a Ray
cluster, or SLURM (through submitit).

The results folder is the single source of truth, whatever the launcher.  Every worker
runs :func:`execute`: it claims the run (``flock`` on a lock file beside the record,
:func:`da_framework.results.claim`), skips it if another worker holds it or has finished
it, trains it and writes its record atomically.  So any mix of launchers, kills and
restarts neither loses nor duplicates a finished run: a killed worker's claim dies with
it, and the run stays pending for the next attempt.  :func:`launch` retries the pending
runs up to ``retries`` times after a worker dies; Ray also retries a task whose worker
process died (``max_retries``).

The four launchers, as ``da bench --launcher <name>`` selects them:

- ``local``: one run after another in this process (the default; ``da bench`` drives it
  itself, with a progress bar).
- ``multi-device``: one worker process per local accelerator, each pinned to its device
  (``CUDA_VISIBLE_DEVICES`` / ``HIP_VISIBLE_DEVICES`` / ``TPU_VISIBLE_CHIPS`` set before
  JAX starts in the worker); on a CPU-only host one worker unless ``workers`` says more.
- ``ray``: each run a Ray task on an existing cluster (``ray.init(address=...)``; a local
  one is started when no address is given), with ``num_cpus`` / ``num_gpus`` per task.
- ``slurm``: each run a job of a SLURM job array through ``submitit`` (``cluster="local"``
  runs the same jobs as local subprocesses, which is how it is tested here).

Paths are made absolute before runs leave this process, since Ray and SLURM workers do not
start in this directory; on a cluster the results folder (and ``$DA_DATA_DIR``) must be on a
file system every node mounts, with ``flock`` support (NFSv4 and Lustre have it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from da_framework.errors import UserError

LAUNCHERS = ("local", "multi-device", "ray", "slurm")
Status = Literal["done", "diverged", "running_elsewhere", "finished_elsewhere", "failed"]
Runner = Callable[[Any], dict[str, Any]]


class LauncherError(UserError):
    """A launcher that cannot start: unknown name, missing optional package, bad option."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one run in one worker.

    Attributes:
      path: the run's record path.
      status: ``"done"`` / ``"diverged"`` (a record was written), ``"running_elsewhere"``
        (another worker holds its claim), ``"finished_elsewhere"`` (its record appeared
        after the sweep was listed), or ``"failed"`` (the worker raised or died; the run
        stays pending).
      target_accuracy: the record's ``target_test_accuracy`` for a finished run.
      wall_time_s: the run's training time, from its record.
      worker: ``host:pid`` of the worker (with its pinned device, if any).
      error: the error message of a failed or diverged run.
    """

    path: str
    status: Status
    target_accuracy: float | None = None
    wall_time_s: float | None = None
    worker: str = ""
    error: str | None = None
    alarms: tuple[str, ...] = ()  # the record's training alarms (da_framework.train.alarms)


def _worker_name() -> str:
    device = next((f" {k}={os.environ[k]}" for k in sorted(set(_PIN_VARS.values())) if k in os.environ), "")
    return f"{socket.gethostname()}:{os.getpid()}{device}"


def default_runner(run: Any) -> dict[str, Any]:
    """Trains one run and writes its record (a non-finite loss writes a diverged record)."""
    from da_framework.bench.sweep import run_or_record_divergence

    return run_or_record_divergence(run)


def execute(run: Any, runner: Runner | None = None) -> Outcome:
    """Runs one :class:`~da_framework.bench.sweep.RunSpec` under its claim, in whatever
    process this is: the unit of work of every launcher.

    A run claimed by another worker, or whose record exists, is skipped (so two workers
    never write the same record); ``runner`` (default :func:`default_runner`) trains it and
    writes its record.  A user error (bad config) propagates; a record is never half-written.
    """
    from da_framework.compile_cache import enable_compile_cache
    from da_framework.results import claim

    enable_compile_cache()  # a fresh worker reuses what earlier workers compiled
    runner = runner or default_runner
    path = Path(run.path)
    with claim(path) as mine:
        if not mine:
            return Outcome(str(path), "running_elsewhere", worker=_worker_name())
        if path.exists():
            return Outcome(str(path), "finished_elsewhere", worker=_worker_name())
        record = runner(run)
    status: Status = "diverged" if record.get("status") == "diverged" else "done"
    acc = record.get("metrics", {}).get("target_test_accuracy")
    return Outcome(str(path), status, acc, record.get("wall_time_s"), _worker_name(), record.get("error"), tuple(record.get("alarms", ())))


def absolute_run(run: Any) -> Any:
    """The run with its record path and checkpoint folder made absolute (workers elsewhere
    do not share this process's working directory)."""
    config = run.config
    if config.checkpoint_dir:
        config = config.replace(checkpoint_dir=str(Path(config.checkpoint_dir).absolute()))
    return dataclasses.replace(run, config=config, path=Path(run.path).absolute())


# --- multi-device -------------------------------------------------------------------------

_PIN_VARS = {"gpu": "CUDA_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES", "rocm": "HIP_VISIBLE_DEVICES", "tpu": "TPU_VISIBLE_CHIPS"}


def device_slots(workers: int | None = None) -> list[dict[str, str]]:
    """The environment of each multi-device worker: one per local accelerator, pinned.

    On an accelerator backend, worker ``i`` sees only device ``i`` (``workers`` may ask for
    fewer).  A CPU backend has no device to pin: ``workers`` processes (default 1) share it.
    """
    import jax

    backend = jax.default_backend()
    if backend == "cpu":
        n = workers or 1
        if n < 1:
            raise LauncherError(f"--workers must be at least 1, got {n}")
        return [{} for _ in range(n)]
    var = _PIN_VARS.get(backend)
    if var is None:
        raise LauncherError(f"multi-device launcher: cannot pin workers on backend {backend!r}; use --launcher local or ray")
    ids = [str(d.local_hardware_id if d.local_hardware_id is not None else d.id) for d in jax.local_devices()]
    if workers is not None:
        if not 1 <= workers <= len(ids):
            raise LauncherError(f"--workers {workers}: this host has {len(ids)} {backend} device(s)")
        ids = ids[:workers]
    env = [{var: i} for i in ids]
    if backend == "tpu":  # a TPU process that sees one chip also needs its own bounds
        for e in env:
            e.update(TPU_CHIPS_PER_PROCESS_BOUNDS="1,1,1", TPU_PROCESS_BOUNDS="1,1,1")
    return env


def _device_worker(runs: Sequence[Any], runner: Runner | None, results: Any) -> None:
    for run in runs:
        try:
            results.put(execute(run, runner))
        except BaseException as e:  # noqa: BLE001 -- reported to the parent, which decides
            results.put(Outcome(str(run.path), "failed", worker=_worker_name(), error=_one_line(e)))
            if not isinstance(e, Exception):
                raise


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_multi_device(runs: Sequence[Any], runner: Runner | None, on_outcome: Callable[[Outcome], None],
                     workers: int | None = None) -> None:
    """One worker process per slot of :func:`device_slots`; every worker walks the whole list,
    and the claims share the runs out (a fast worker takes more)."""
    slots = device_slots(workers)
    ctx = multiprocessing.get_context("spawn")  # a fresh JAX per worker, started after pinning
    results = ctx.Queue()
    procs = []
    for i, env in enumerate(slots):
        order = list(runs[i::len(slots)]) + [r for j, r in enumerate(runs) if j % len(slots) != i]
        with _environment(env):
            p = ctx.Process(target=_device_worker, args=(order, runner, results), daemon=True)
            p.start()
        procs.append(p)
    while any(p.is_alive() for p in procs) or not results.empty():
        try:
            outcome = results.get(timeout=0.2)
        except queue.Empty:
            continue
        if outcome.status in ("done", "diverged", "failed"):
            on_outcome(outcome)
    for p in procs:
        p.join()
    dead = [p for p in procs if p.exitcode != 0]
    if dead:
        on_outcome(Outcome("", "failed", worker=f"{len(dead)} worker(s)",
                           error=f"exit code(s) {', '.join(str(p.exitcode) for p in dead)}; their unfinished runs stay pending"))


# --- ray ----------------------------------------------------------------------------------

def run_ray(runs: Sequence[Any], runner: Runner | None, on_outcome: Callable[[Outcome], None], *,
            address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0, max_retries: int = 2) -> None:
    """Each run a Ray task (``num_cpus``/``num_gpus`` each) on the cluster at ``address``
    (``"auto"``, ``"ray://host:10001"``; None starts a local one).  Ray reruns a task whose
    worker died up to ``max_retries`` times; the claim makes a rerun safe."""
    try:
        import ray
    except ImportError:
        raise LauncherError("--launcher ray needs Ray: pip install 'da_framework[dist]'") from None
    env = {k: str(Path(os.environ[k]).absolute()) for k in ("DA_DATA_DIR", "DA_COMPILE_CACHE") if os.environ.get(k)}
    if os.environ.get("DA_COMPILE_CACHE", "").strip().lower() in ("0", "off", "false", "no"):
        env["DA_COMPILE_CACHE"] = "off"
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env} if env else None)
        except ConnectionError as e:
            raise LauncherError(f"--launcher ray: cannot reach a Ray cluster at {address!r} ({e}); start one with 'ray start --head'") from None
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(execute)
    pending = {task.remote(run, runner): run for run in runs}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(ready[0])
        try:
            on_outcome(ray.get(ready[0]))
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            if isinstance(cause, UserError):
                raise cause from None
            on_outcome(Outcome(str(run.path), "failed", error=_one_line(cause)))
        except ray.exceptions.RayError as e:  # the worker died more often than max_retries
            on_outcome(Outcome(str(run.path), "failed", error=_one_line(e)))


# --- slurm (submitit) ---------------------------------------------------------------------

def run_slurm(runs: Sequence[Any], runner: Runner | None, on_outcome: Callable[[Outcome], None], *,
              folder: Path, cluster: str | None = None, partition: str | None = None, timeout_min: int = 60,
              gpus_per_task: int = 0, cpus_per_task: int = 2, array_parallelism: int = 64) -> None:
    """Each run a job of one SLURM job array (submitit); waits for all of them.

    ``cluster`` is submitit's: None picks SLURM when ``sbatch`` exists, ``"local"`` runs the
    jobs as subprocesses of this host (tests), ``"debug"`` in this process.  Job logs go to
    ``folder`` (``<results>/.submitit``)."""
    try:
        import submitit
    except ImportError:
        raise LauncherError("--launcher slurm needs submitit: pip install 'da_framework[dist]'") from None
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": timeout_min, "cpus_per_task": cpus_per_task, "tasks_per_node": 1, "nodes": 1}
    if executor.cluster == "slurm":
        params.update(slurm_array_parallelism=array_parallelism, gpus_per_node=gpus_per_task)
        if partition:
            params["slurm_partition"] = partition
    elif partition:
        raise LauncherError(f"--slurm-partition {partition!r} given, but submitit found no SLURM here (cluster {executor.cluster!r})")
    executor.update_parameters(**params)
    jobs = executor.map_array(execute, list(runs), [runner] * len(runs))
    for run, job in zip(runs, jobs):
        try:
            on_outcome(job.result())
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 -- submitit's FailedJobError and friends
            on_outcome(Outcome(str(run.path), "failed", worker=f"job {job.job_id}", error=_one_line(e)))


# --- one entry point -----------------------------------------------------------------------

def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}" if lines else type(e).__name__


def interleave_programs(runs: Sequence[Any]) -> list[Any]:
    """``runs`` reordered round-robin over their record folders: first one run of every folder,
    then a second of each, and so on.

    Runs in one folder differ only in seed, so they compile the same programs.  Workers that
    start together then compile different programs, and a folder's later runs find its
    programs in the persistent compilation cache (:mod:`da_framework.compile_cache`) instead
    of compiling them again at the same time on another worker.
    """
    groups: dict[Path, list[Any]] = {}
    for run in runs:
        groups.setdefault(Path(run.path).parent, []).append(run)
    waves = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(waves) for g in groups.values() if i < len(g)]


def launch(launcher: str, runs: Sequence[Any], on_outcome: Callable[[Outcome], None], *, runner: Runner | None = None,
           retries: int = 2, results_dir: Path | None = None, **options: Any) -> int:
    """Runs ``runs`` with the named launcher, then again for the runs a dead worker left
    pending, up to ``retries`` more times.  Returns how many attempts were made.

    Options by launcher: ``multi-device``: ``workers``; ``ray``: ``address``, ``num_cpus``,
    ``num_gpus``; ``slurm``: ``cluster``, ``partition``, ``timeout_min``, ``gpus_per_task``,
    ``cpus_per_task``, ``array_parallelism`` (job logs under ``results_dir/.submitit``).

    Raises:
      LauncherError: unknown launcher, an option it does not take, a missing package.
    """
    allowed = {"multi-device": {"workers"}, "ray": {"address", "num_cpus", "num_gpus"},
               "slurm": {"cluster", "partition", "timeout_min", "gpus_per_task", "cpus_per_task", "array_parallelism"},
               "local": set()}
    if launcher not in allowed:
        raise LauncherError(f"unknown launcher {launcher!r}; valid launchers: {', '.join(LAUNCHERS)}")
    given = {k for k, v in options.items() if v is not None}
    bad = sorted(given - allowed[launcher])
    if bad:
        raise LauncherError(f"option(s) {', '.join(bad)} do not apply to --launcher {launcher}")
    options = {k: v for k, v in options.items() if v is not None}
    runs = [absolute_run(r) for r in runs]
    if launcher != "local":  # parallel workers: one compile per program (interleave_programs)
        runs = interleave_programs(runs)
    attempts = 0
    for attempts in range(1, retries + 2):
        todo = [r for r in runs if not Path(r.path).exists()]
        if not todo:
            return attempts - 1
        if launcher == "local":
            for run in todo:
                try:
                    on_outcome(execute(run, runner))
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 -- a crash in one run: record it, go on
                    on_outcome(Outcome(str(run.path), "failed", worker=_worker_name(), error=_one_line(e)))
                    traceback.print_exc()
        elif launcher == "multi-device":
            run_multi_device(todo, runner, on_outcome, **options)
        elif launcher == "ray":
            run_ray(todo, runner, on_outcome, max_retries=retries, **options)
        else:
            folder = (results_dir or Path(todo[0].path).parent).absolute() / ".submitit"
            run_slurm(todo, runner, on_outcome, folder=folder, **options)
        if all(Path(r.path).exists() for r in todo):
            return attempts
        time.sleep(0.1)
    return attempts
