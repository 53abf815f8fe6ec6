"""Where a train step's time goes on a GPU: throughput, MFU, memory floor and a kernel breakdown.

Run by hand on a GPU (not part of the tests); writes one JSON file and prints a summary:

    PYTHONPATH=$PWD python benchmarks/step_profile.py --model resnet50 --method dann \\
        --dtype bfloat16 --batch 128 --trace-dir /tmp/trace --json /tmp/b128.json

It builds the same compiled JAX step as ``step_throughput.py`` (``jax_runner``: synthetic
batches already on the device, state donated) and reports, per step:

* examples/s and the model FLOPs utilisation (jaxpr FLOPs, :mod:`da_framework.train.flops`,
  over the dense peak of the device);
* XLA's ``cost_analysis()`` bytes accessed and the time the device needs just to move them at
  its peak HBM bandwidth (:data:`PEAK_HBM_TBPS`): a lower bound on the step time if every
  fused kernel ran at full memory bandwidth;
* with ``--trace-dir``, a ``jax.profiler`` trace of a few steps, summarised by
  :func:`summarise_trace`: GPU kernel time split into convolutions/matrix products (cuDNN,
  cuBLAS, CUTLASS kernels), XLA's own fused element-wise and reduction kernels (batch norm,
  ReLU, residual adds, optimiser update) and copies, the idle time between kernels, and
  the FLOP rate the convolution kernels reach on their own.

Together these say whether a model can reach a given MFU at all: when the non-matmul
kernels, which do no model FLOPs, take most of the step, MFU is bounded by their share
however fast the convolutions run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_throughput import MODELS, METHODS, jax_runner, peak_flops  # noqa: E402

# Peak HBM bandwidth in TB/s by device kind (vendor data sheets; substring of device_kind).
PEAK_HBM_TBPS: dict[str, float] = {"H200": 4.8, "H100 PCIe": 2.0, "H100": 3.35, "A100": 2.0, "L4": 0.3, "A10": 0.6}

# Substrings (lower case) of kernel names that compute convolutions or matrix products.
MATMUL_MARKERS = ("conv", "cudnn", "xmma", "gemm", "cutlass", "implicit", "fprop", "dgrad", "wgrad",
                  "winograd", "hmma", "cublas", "nvjet", "sm90_", "sm80_", "sm100_")
COPY_MARKERS = ("memcpy", "memset")


def kernel_category(name: str) -> str:
    """``"matmul"`` (convolution / matrix product), ``"copy"`` or ``"xla_fused"`` for a GPU kernel."""
    low = name.lower()
    if any(m in low for m in COPY_MARKERS):
        return "copy"
    if any(m in low for m in MATMUL_MARKERS):
        return "matmul"
    return "xla_fused"


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s >= end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def find_trace(trace_dir: str | Path) -> Path:
    """The newest ``perfetto_trace.json.gz`` under ``trace_dir`` (written by ``jax.profiler.trace``)."""
    found = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}; was the trace written with create_perfetto_trace=True?")
    return found[-1]


def summarise_trace(path: str | Path, steps: int, top: int = 25) -> dict[str, Any]:
    """Per-step GPU kernel time by category from a Chrome/Perfetto trace of ``steps`` steps.

    Kernel events are the complete (``"X"``) events on the threads named ``Stream ...`` of the
    processes named ``/device:GPU...``. Returns microseconds per step for each category
    (:func:`kernel_category`), the busy time (union of all kernel intervals) and span (first
    kernel start to last kernel end) per step, the kernel count per step, the ``top`` kernels
    by time, and the names of every device thread (to read the raw trace further).
    """
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    gpu_pids = {pid for pid, name in process.items() if "GPU" in name}
    by_category: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    intervals: list[tuple[float, float]] = []
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in gpu_pids:
            continue
        if "stream" not in thread.get((e["pid"], e.get("tid")), "").lower():
            continue
        dur = float(e.get("dur", 0.0))
        by_category[kernel_category(e["name"])] += dur
        by_kernel[e["name"]][0] += dur
        by_kernel[e["name"]][1] += 1
        intervals.append((float(e["ts"]), float(e["ts"]) + dur))
    kernels = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])
    by_kind: dict[str, float] = defaultdict(float)  # XLA fusion kinds: "loop_add_fusion_3" -> "loop_add_fusion"
    for name, (t, _) in by_kernel.items():
        by_kind[re.sub(r"[._]\d+$", "", name) if kernel_category(name) == "xla_fused" else kernel_category(name)] += t
    return {
        "trace": str(path),
        "steps": steps,
        "device_threads": sorted({name for (pid, _), name in thread.items() if pid in gpu_pids}),
        "kernels_per_step": len(intervals) / steps,
        "category_us_per_step": {k: v / steps for k, v in sorted(by_category.items())},
        "busy_us_per_step": _union_us(intervals) / steps,
        "span_us_per_step": (max(e for _, e in intervals) - min(s for s, _ in intervals)) / steps if intervals else 0.0,
        "kind_us_per_step": {k: v / steps for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": name[:160], "category": kernel_category(name), "us_per_step": t / steps, "calls_per_step": n / steps}
            for name, (t, n) in kernels[:top]
        ],
    }


def bytes_accessed(compiled: Any) -> float | None:
    """XLA's estimate of the bytes a compiled executable reads and writes (None if unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends may not implement it)
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    value = (cost or {}).get("bytes accessed")
    return float(value) if value is not None else None


def peak_hbm(device_kind: str) -> float | None:
    """Peak HBM bytes/s of a device kind (None if unknown)."""
    for kind, tbps in PEAK_HBM_TBPS.items():
        if kind in device_kind:
            return tbps * 1e12
    return None


def main() -> None:
    """Times the step, optionally traces it, and writes the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50", choices=sorted(MODELS))
    ap.add_argument("--method", default="dann", choices=sorted(METHODS))
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=128, help="examples per domain (a step sees twice as many)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trace-dir", default=None, help="write a jax.profiler trace of --trace-steps steps here")
    ap.add_argument("--trace-steps", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the summary here")
    args = ap.parse_args()

    dev = jax.devices()[0]
    t0 = time.perf_counter()
    runner = jax_runner(args.model, args.method, args.dtype, args.batch)
    setup_s = time.perf_counter() - t0
    times = sorted(runner.run(args.steps) / args.steps for _ in range(args.rounds))
    step_s = times[len(times) // 2]
    examples = 2 * args.batch
    peak = peak_flops(args.dtype)
    hbm = peak_hbm(dev.device_kind)
    nbytes = bytes_accessed(runner.compiled)
    out: dict[str, Any] = {
        "device": dev.device_kind,
        "platform": dev.platform,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "model": args.model,
        "method": args.method,
        "dtype": args.dtype,
        "batch_per_domain": args.batch,
        "compile_s": runner.compile_s,
        "setup_s": setup_s,
        "step_ms_rounds": [1e3 * t for t in times],
        "step_ms": 1e3 * step_s,
        "examples_per_s": examples / step_s,
        "model_gflop_per_step": runner.flops_per_step / 1e9,
        "mfu": runner.flops_per_step / step_s / peak if peak else None,
        "bytes_accessed_gb_per_step": nbytes / 1e9 if nbytes else None,
        "hbm_floor_ms": 1e3 * nbytes / hbm if nbytes and hbm else None,
    }
    _write(out, args.json)  # the timings survive a profiler failure below
    if args.trace_dir:
        runner.run(2)
        try:
            with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
                traced_s = runner.run(args.trace_steps)
            out["traced_step_ms"] = 1e3 * traced_s / args.trace_steps
            summary = summarise_trace(find_trace(args.trace_dir), args.trace_steps)
        except Exception as err:  # noqa: BLE001  (no CUPTI, unreadable trace: keep the timings)
            summary = {"error": f"{type(err).__name__}: {err}"}
        out["trace"] = summary
        matmul_us = summary.get("category_us_per_step", {}).get("matmul")
        if matmul_us and peak:
            out["matmul_kernels_mfu"] = runner.flops_per_step / (matmul_us * 1e-6) / peak
        _write(out, args.json)
    print(json.dumps(out, indent=1))


def _write(out: dict[str, Any], path: str | None) -> None:
    """Writes ``out`` as JSON to ``path`` (if given)."""
    if path:
        Path(path).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
