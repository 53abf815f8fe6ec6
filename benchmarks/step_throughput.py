"""Train-step throughput: da_framework (JAX) against the same model and loss in PyTorch eager.

Run by hand (not part of the tests); prints one table and, with ``--json``, writes it:

    PYTHONPATH=$PWD python benchmarks/step_throughput.py --models lenet --dtypes float32
    PYTHONPATH=$PWD python benchmarks/step_throughput.py --models resnet50 --methods dann --batch 4 --steps 3

For every (model, method, dtype) the JAX train step (``da_framework.train.make_train_step``,
compiled once with ``jax.jit``, state donated) and a plain PyTorch eager version of the same
network, loss and optimiser (``torch_twins.py``, written the way Transfer-Learning-Library
runs it) are timed in the same process in many short rounds, JAX and PyTorch alternating
(and swapping which goes first every round) so that both see the same machine load.  Each
round gives one JAX/PyTorch ratio; the table reports the median ratio and its inter-quartile
range over rounds, the median examples/s of each side (source + target examples per second),
the JAX compile time, the step's model FLOPs (matrix products and convolutions counted from
its jaxpr, :mod:`da_framework.train.flops`) and, on a GPU, the model FLOPs utilisation
(:data:`PEAK_TFLOPS`).  Data are synthetic batches already on the device: this measures the
step, not the input pipeline.

Both sides get the same threads: PyTorch's intra-op pool is set to the number of cores this
process may run on (``os.sched_getaffinity``), which is the size of XLA:CPU's pool.  The
header names the CPU model, those cores, the jax/jaxlib/torch versions, ``$XLA_FLAGS`` and the
load average before and after.

PyTorch is not a dependency of da_framework: ``pip install 'da_framework[bench]'`` (or
``pip install torch``); without it, or with ``--no-torch``, only the JAX columns are filled.  The PyTorch side
runs on CUDA when ``torch.cuda.is_available()``, else on CPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from da_framework.config import ExperimentConfig
from da_framework.losses.registry import LossError, get_loss
from da_framework.models import make_model
from da_framework.train import init_train_state, make_optimizer, make_train_step, parse_method
from da_framework.train.flops import model_flops

# Dense peak TFLOP/s by device kind (substring of ``jax.devices()[0].device_kind``):
# (bfloat16 tensor cores, float32 as JAX runs it on GPU by default = TF32 tensor cores).
# Vendor data sheets, dense (no sparsity).
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),  # SXM
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
    "A10": (125.0, 62.5),
}

MODELS: dict[str, dict[str, Any]] = {
    # the digits CNN (TLL / ADDA LeNet: conv20-conv50-dense500) on 28x28 grey images
    "lenet": dict(name="lenet", shape=(28, 28, 1), classes=10, batch=32, kwargs={}),
    # the CIFAR-style ResNet-8 (BatchNorm) on 32x32 RGB images (CIFAR-10 / digits in colour)
    "resnet8": dict(name="resnet8", shape=(32, 32, 3), classes=10, batch=32, kwargs={}),
    # tllib's DTN (SVHN -> MNIST digits CNN) on 32x32 RGB images
    "dtn": dict(name="dtn", shape=(32, 32, 3), classes=10, batch=32, kwargs={}),
    # ResNet-50 on 224x224 RGB (Office-31 has 31 classes)
    "resnet50": dict(name="resnet50", shape=(224, 224, 3), classes=31, batch=32, kwargs={}),
    # ViT-Base/16 on 224x224 RGB: a matmul-bound backbone (JAX side only; no PyTorch twin here)
    "vit_b16": dict(name="vit_b16", shape=(224, 224, 3), classes=31, batch=32, kwargs={}),
}
TORCH_MODELS = ("lenet", "dtn", "resnet8", "resnet50")  # the models torch_twins.py has a PyTorch version of
METHODS: dict[str, str] = {
    "source_only": "cross_entropy",
    "dann": "cross_entropy + 1.0*dann",
    "dan": "cross_entropy + 1.0*mmd",
    "cdan": "cross_entropy + 1.0*cdan",
}
BOTTLENECK = 256


@dataclass
class Runner:
    """One side of a comparison: ``run(n)`` takes n steps and returns the seconds taken."""

    run: Callable[[int], float]
    compile_s: float = float("nan")
    flops_per_step: float = float("nan")
    compiled: Any = None  # the JAX side's compiled executable (for cost analysis and profiling)


# --------------------------------------------------------------------------------- JAX


def jax_runner(model_name: str, method_name: str, dtype: str, batch: int, seed: int = 0,
               load: str | None = None) -> Runner:
    """The da_framework step of ``method_name`` on ``model_name``, compiled, with warm state.

    ``load``: a torchvision / timm state_dict file loaded into the backbone after
    initialisation (:func:`da_framework.transfer.pretrained.load_pretrained`), as ``da run``
    does for ``model_kwargs={"pretrained": file}``.
    """
    spec = MODELS[model_name]
    model = make_model(spec["name"], spec["classes"], BOTTLENECK, **spec["kwargs"])
    method = parse_method(METHODS[method_name])
    tx = make_optimizer(ExperimentConfig(optimizer="sgd", learning_rate=0.01, weight_decay=1e-3, steps=10_000))
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(2):  # two distinct batches, alternated
        xs = jax.device_put(rng.random((batch, *spec["shape"]), dtype=np.float32))
        xt = jax.device_put(rng.random((batch, *spec["shape"]), dtype=np.float32))
        ys = jax.device_put(rng.integers(0, spec["classes"], batch).astype(np.int32))
        batches.append(({"image": xs, "label": ys}, {"image": xt}))
    (s0, t0) = batches[0]
    state = jax.jit(lambda k: init_train_state(k, model, method, tx, s0["image"], t0["image"], s0["label"]))(
        jax.random.key(seed)
    )
    if load is not None:
        from da_framework.transfer.pretrained import load_pretrained

        variables, report = load_pretrained(load, {"params": state.params["model"], **state.model_state}, spec["name"])
        print(f"loaded {load}: {report.summary()}")
        state = state.replace(params={**state.params, "model": variables["params"]},
                              model_state={k: variables[k] for k in state.model_state})
    raw = make_train_step(model, method, tx, 10_000, compute_dtype=dtype)
    step = jax.jit(lambda st, s, t, k: raw(st, s, t, jax.random.fold_in(k, st.step)), donate_argnums=0)
    key = jax.random.key(seed + 1)
    start = time.perf_counter()
    compiled = step.lower(state, s0, t0, key).compile()
    compile_s = time.perf_counter() - start
    # Model FLOPs from the step's jaxpr: XLA's cost_analysis misses convolutions run by cuDNN.
    flops = model_flops(lambda st, s, t, k: raw(st, s, t, jax.random.fold_in(k, st.step)), state, s0, t0, key)
    box = {"state": state}

    def run(n: int) -> float:
        st = box["state"]
        jax.block_until_ready(st)
        t = time.perf_counter()
        for i in range(n):
            s, tb = batches[i % 2]
            st, metrics = compiled(st, s, tb, key)
        jax.block_until_ready((st, metrics))
        box["state"] = st
        return time.perf_counter() - t

    run(2)  # warm-up
    return Runner(run, compile_s, flops, compiled)


# ------------------------------------------------------------------------------- driver


def _num(x: float) -> str:
    """Three significant digits, thousands separated (0.847, 12.3, 1,234)."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def peak_flops(dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (None off GPU or for unknown GPUs)."""
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return None
    for kind, (bf16, f32) in PEAK_TFLOPS.items():
        if kind in dev.device_kind:
            return 1e12 * (bf16 if dtype == "bfloat16" else f32)
    return None


def cdan_registered() -> bool:
    """Whether a loss named ``cdan`` is registered (another module may add it)."""
    try:
        get_loss("cdan")
    except LossError:
        return False
    return True


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile) of ``xs`` (linear interpolation)."""
    q = np.percentile(np.asarray(xs, float), [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def environment(threads: int) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, versions, threads, XLA flags, load."""
    from da_framework.results import cpu_model

    def current_xla_flags() -> str:  # as da_framework.xla_cpu has it (absent in older checkouts)
        return " ".join(os.environ.get("XLA_FLAGS", "").split())

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    dev = jax.devices()[0]
    return {
        "cpu": cpu_model(), "cores_available": threads, "cpu_count": os.cpu_count(),
        "device": f"{dev.device_kind} ({dev.platform})", "jax": jax.__version__, "jaxlib": version("jaxlib"),
        "torch": version("torch"), "threads": threads, "xla_flags": current_xla_flags(),
        "load_average_before": os.getloadavg(),
    }


def measure(jr: Runner, run_torch: Callable[[int], float] | None, batch: int, steps: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds; per-round examples/s of each side and their per-round ratio."""
    jax_eps, torch_eps = [], []
    for r in range(rounds):
        sides = [("jax", jr.run)] + ([("torch", run_torch)] if run_torch else [])
        for name, run in sides if r % 2 == 0 else sides[::-1]:
            eps = 2 * batch * steps / run(steps)
            (jax_eps if name == "jax" else torch_eps).append(eps)
    ratios = [j / t for j, t in zip(jax_eps, torch_eps)]
    return {"jax_eps": jax_eps, "torch_eps": torch_eps, "ratios": ratios}


def main() -> None:
    """Parses arguments, runs the interleaved rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet,resnet8,resnet50", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--methods", default="source_only,dann,dan,cdan", help="comma list of: " + ", ".join(METHODS))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch", type=int, default=None, help="per-domain batch (default: 32; resnet50 on CPU 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 10; resnet50 20 GPU / 2 CPU)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved JAX/PyTorch rounds (median and IQR reported)")
    ap.add_argument("--no-torch", action="store_true", help="time only the JAX step")
    ap.add_argument("--json", type=str, default=None, help="also write the environment, rows and every round here")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=190)
    on_gpu = jax.devices()[0].platform == "gpu"
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    run_torch_for = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(threads)
            from torch_twins import torch_step_runner as run_torch_for
        except ImportError:
            console.print("[yellow]torch not installed: PyTorch columns skipped (pip install torch)[/]")
    if run_torch_for is not None and on_gpu and not torch.cuda.is_available():
        console.print("[yellow]the PyTorch side runs on CPU (CPU wheel); a fair GPU ratio needs a CUDA torch[/]")
    env = environment(threads)
    notes = []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "cdan" in methods and not cdan_registered():
        methods.remove("cdan")
        notes.append("cdan: skipped, no loss named 'cdan' is registered in this checkout")

    rows = []
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec, big = MODELS[model_name], model_name in ("resnet50", "vit_b16")
        batch = args.batch or (4 if big and not on_gpu else spec["batch"])
        steps = args.steps or (10 if not big else (20 if on_gpu else 2))
        for method_name in methods:
            for dtype in [d.strip() for d in args.dtypes.split(",")]:
                console.log(f"{model_name} {method_name} {dtype}: compiling")
                jr = jax_runner(model_name, method_name, dtype, batch)
                tr = None
                if run_torch_for is not None and model_name in TORCH_MODELS:
                    tr = run_torch_for(model_name, method_name, dtype, batch, spec["shape"], spec["classes"])
                m = measure(jr, tr, batch, steps, args.rounds)
                j, t = statistics.median(m["jax_eps"]), (statistics.median(m["torch_eps"]) if m["torch_eps"] else float("nan"))
                q = quartiles(m["ratios"]) if m["ratios"] else (float("nan"),) * 3
                peak = peak_flops(dtype)
                mfu = jr.flops_per_step * j / (2 * batch) / peak if peak else None
                rows.append(dict(model=model_name, method=method_name, dtype=dtype, batch=batch, steps=steps, rounds=args.rounds,
                                 compile_s=jr.compile_s, jax_eps=j, torch_eps=t, ratio_q25=q[0], ratio_median=q[1], ratio_q75=q[2],
                                 gflop_per_step=jr.flops_per_step / 1e9, mfu=mfu, per_round=m))
                console.log(f"  compile {jr.compile_s:.1f}s; jax {_num(j)} ex/s, torch {_num(t)} ex/s, ratio {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}]")

    env["load_average_after"] = os.getloadavg()
    table = Table(title=f"train-step throughput on {env['cpu'] if not on_gpu else env['device']}, {threads} threads each side")
    for col in ("model", "method", "dtype", "batch/domain", "steps x rounds", "JAX compile s", "JAX ex/s", "PyTorch ex/s",
                "JAX/PyTorch median [IQR]", "GFLOP/step", "MFU"):
        table.add_column(col, justify="right" if col not in ("model", "method", "dtype") else "left")
    for r in rows:
        ratio = "-" if np.isnan(r["ratio_median"]) else f"{r['ratio_median']:.2f}x [{r['ratio_q25']:.2f}, {r['ratio_q75']:.2f}]"
        table.add_row(r["model"], r["method"], r["dtype"], str(r["batch"]), f"{r['steps']} x {r['rounds']}", f"{r['compile_s']:.1f}",
                      _num(r["jax_eps"]), "-" if np.isnan(r["torch_eps"]) else _num(r["torch_eps"]), ratio,
                      f"{r['gflop_per_step']:.2f}", "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%")
    console.print(table)
    console.print(f"cpu {env['cpu']!r}: {threads} cores available of {env['cpu_count']}; jax {env['jax']}, jaxlib {env['jaxlib']}, "
                  f"torch {env['torch']}; XLA_FLAGS={env['xla_flags']!r}; load average before {env['load_average_before']}, "
                  f"after {env['load_average_after']}", markup=False)
    for note in notes:
        console.print(f"note: {note}")
    console.print("examples/s = (source + target examples) per second, median over rounds; ratio = per-round JAX/PyTorch; MFU only on GPU")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "environment": env, "rows": rows}, f, indent=1)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
