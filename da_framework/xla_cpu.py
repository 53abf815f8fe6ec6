"""The XLA:CPU settings da_framework turns on by default, and how runs record them.

XLA reads ``$XLA_FLAGS`` once, when JAX starts its first backend.  Importing ``da_framework``
calls :func:`apply_cpu_defaults`, which appends :data:`FAST_CPU_FLAGS` to ``$XLA_FLAGS`` if the
backend has not started yet, the user has not set those flags, ``$DA_XLA_CPU_DEFAULTS`` is not
``0`` and the installed jaxlib is one they were measured on (:data:`TESTED_JAXLIB`: an unknown
flag makes XLA abort at start-up, so they are never passed to another version).

What the flags buy is measured in ``docs/performance.md`` (``benchmarks/step_throughput.py``).
``--xla_cpu_experimental_ynn_fusion_type=dot`` hands matrix products and convolutions to the
YNNPACK library: on the 2-core AMD EPYC of that page a LeNet convolution's forward and backward
pass took half the time.  The flags change the floating-point rounding of those operations, not
what is computed, and are deterministic (two runs give the same bits).

Runs record the flags they ran with (``platform.xla_flags`` in every result JSON, via
:func:`current_xla_flags`); ``da reproduce`` reruns a record under its recorded flags
(:func:`use_xla_flags`), so records made before or without these defaults still reproduce
bitwise.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

# Appended to $XLA_FLAGS by default (each measured in docs/performance.md).
FAST_CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
# jaxlib version prefixes the flags were measured on; other versions get no flags.
TESTED_JAXLIB: tuple[str, ...] = ("0.10.",)
OPT_OUT_VARIABLE = "DA_XLA_CPU_DEFAULTS"


class XlaFlagsError(RuntimeError):
    """Raised when XLA flags must change but JAX's backend has already started."""


def backend_started() -> bool:
    """Whether JAX has created its backends (after which ``$XLA_FLAGS`` is no longer read)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(bridge is not None and bridge.backends_are_initialized())


def current_xla_flags() -> str:
    """``$XLA_FLAGS`` as this process set it (what the backend starts, or started, with)."""
    return " ".join(os.environ.get("XLA_FLAGS", "").split())


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def cpu_defaults() -> tuple[str, ...]:
    """The flags :func:`apply_cpu_defaults` would add now: none when opted out, on an untested
    jaxlib, or for flags the user already set (by name) in ``$XLA_FLAGS``."""
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return ()
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    if not jaxlib.startswith(TESTED_JAXLIB):
        return ()
    present = {_flag_name(f) for f in current_xla_flags().split()}
    return tuple(f for f in FAST_CPU_FLAGS if _flag_name(f) not in present)


def apply_cpu_defaults() -> tuple[str, ...]:
    """Appends :func:`cpu_defaults` to ``$XLA_FLAGS`` before JAX's backend starts.

    Returns:
      The flags added (empty when the backend had already started, or nothing applies).
    """
    if backend_started():
        return ()
    added = cpu_defaults()
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current_xla_flags(), *added]).strip()
    return added


def use_xla_flags(flags: str) -> bool:
    """Makes this process run with exactly ``flags`` as ``$XLA_FLAGS`` (``da reproduce``).

    Returns:
      True if ``$XLA_FLAGS`` was changed, False if it already held ``flags``.

    Raises:
      XlaFlagsError: the flags differ and the backend has already started.
    """
    want = " ".join(flags.split())
    if want == current_xla_flags():
        return False
    if backend_started():
        raise XlaFlagsError(
            f"this run needs XLA_FLAGS={want!r} but JAX already started with {current_xla_flags()!r}; "
            f"start a new process with XLA_FLAGS={want!r} {OPT_OUT_VARIABLE}=0"
        )
    os.environ["XLA_FLAGS"] = want
    return True
