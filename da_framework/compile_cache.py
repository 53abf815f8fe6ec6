"""JAX's persistent compilation cache, on for the command line and for sweep workers.

Every :func:`~da_framework.train.train` call traces and compiles its step, initialisation
and evaluation again, even when an earlier run in the same process or on the same machine
compiled the very same programs (runs of one sweep that differ in seed or in a value that
is an input, not a constant).  JAX can keep compiled executables on disk and reuse them when
the program, the compile options, the XLA flags, the jax/jaxlib versions and the devices
are the same (``jax/_src/cache_key.py`` hashes all of these).  A reused executable is the
one a fresh compile would build, so results do not change (``tests/test_compile_cache.py``
checks histories bitwise).  Measured on the 2-core Intel Xeon (three 20-step DANN runs of
the embedded default, seeds 0-2, in one process): 6.0, 4.2 and 4.2 s without the cache,
6.1, 1.0 and 1.1 s with it, and 2.5, 0.9 and 1.0 s for seeds 3-5 in a new process with the
cache warm.

:func:`enable_compile_cache` is called by the ``da`` command (every sub-command) and by
every sweep worker (:func:`da_framework.bench.launchers.execute`), so Ray, multi-device
and SLURM workers stop paying a fresh compile per run.  Library calls of ``train()`` leave
JAX's settings alone; call :func:`enable_compile_cache` yourself in a notebook.

Where: ``$DA_COMPILE_CACHE`` (a folder; ``0``/``off`` disables it), by default
``$XDG_CACHE_HOME/da_framework/jax`` (``~/.cache/da_framework/jax``), in a sub-folder per CPU
model and instruction-set flags and per jax/jaxlib version, so machines with different CPUs
that share a home folder never load each other's code.  The cache is capped at
:data:`MAX_BYTES` (JAX evicts the least recently used entries).  A folder set by the user
through ``jax.config`` (``jax_compilation_cache_dir``) wins.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import jax

CACHE_VARIABLE = "DA_COMPILE_CACHE"
MAX_BYTES = 2 << 30
MIN_COMPILE_SECONDS = 0.1  # smaller programs compile faster than a cache read pays for
_OFF = ("0", "off", "false", "no")


def _cpu_key() -> str:
    """CPU model and a hash of its instruction-set flags (Linux), e.g. ``Intel_R_Xeon_R_Processor-1a2b3c4d``."""
    from da_framework.results import cpu_model

    flags = ""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    model = re.sub(r"[^A-Za-z0-9]+", "_", cpu_model()).strip("_")[:48]
    return f"{model}-{hashlib.sha256(flags.encode()).hexdigest()[:8]}"


def cache_directory() -> Path | None:
    """The folder :func:`enable_compile_cache` uses on this machine (module doc), None when disabled."""
    value = os.environ.get(CACHE_VARIABLE, "").strip()
    if value.lower() in _OFF:
        return None
    base = Path(value) if value else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "da_framework" / "jax"
    import jaxlib

    return base / f"{_cpu_key()}-jax{jax.__version__}-jaxlib{jaxlib.__version__}"


def enable_compile_cache() -> Path | None:
    """Turns on JAX's persistent compilation cache in :func:`cache_directory` (idempotent).

    Returns:
      the folder in use; None when disabled by ``$DA_COMPILE_CACHE`` or when the folder
      cannot be created (a read-only home: runs then compile as before).
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    directory = cache_directory()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    try:  # the size cap needs filelock (a dependency); without it the cache grows unbounded
        import filelock  # noqa: F401

        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    except ImportError:
        pass
    return directory
