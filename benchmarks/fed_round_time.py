"""Wall time per federated round: each client-execution strategy of the compiled engine vs
the sequential reference loop.

100 clients (Dirichlet(0.5) label skew over the embedded ``digits/source`` train split, so
client sizes are uneven), all taking part every round, a small LeNet or MLP, E local
epochs of batch B.  Every engine runs in the same process on the same data, from the same
initial model with the same round keys; compilation is excluded (one warm-up round each,
reported separately); the timed rounds are interleaved (round r of every engine, then round
r + 1), so load from other jobs on a shared machine falls on all engines alike.  Reported:
median and inter-quartile range of the seconds per round and of the per-round ratio
loop / engine, and each engine's max |parameter difference| from the loop at the end.

Engines (``--strategies``): ``vmap``, ``scan``, ``chunk`` (``--chunk`` clients at a time) are
the compiled round's strategies (:mod:`da_framework.federated.execution`); ``loop`` is the
sequential reference (``tests/federated_reference.py``: one jitted step per local step, a
Python loop over clients and steps).  ``--plain-convs`` adds each compiled strategy once more
with XLA's own convolution gradients (without ``loop_friendly_convs``).

Run (CPU):  nice -n 10 python benchmarks/fed_round_time.py --models lenet,mlp --rounds 9
GPU check:  python benchmarks/fed_round_time.py --gpu-check --out fed_round_time_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import da_framework  # noqa: F401  (first: it sets the project's default XLA:CPU flags before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np


def machine() -> dict[str, object]:
    """CPU model, core counts, library versions and XLA flags of this process."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import jaxlib

    return {
        "cpu": cpu, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def quartiles(values: list[float]) -> dict[str, float]:
    """Median and inter-quartile range (25th to 75th percentile)."""
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def build_engines(model: str, args: argparse.Namespace) -> tuple[dict, tuple, dict]:
    """The engines to time for one model: name -> ``fn(params, server_state, round) -> (params, state)``."""
    from da_framework.config import ExperimentConfig
    from da_framework.federated.algorithms import server_optimizer
    from da_framework.federated.config import FedConfig
    from da_framework.federated.execution import Execution, model_has_convolutions, resolve_execution
    from da_framework.federated.runner import init_global_params, local_training, make_clients
    from da_framework.federated.simulation import make_round_fn, place_clients, stack_clients

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from federated_reference import reference_round  # the sequential definition, kept with the tests

    kwargs = {"channels": (8, 16), "dense": 64} if model == "lenet" else {"hidden": (64, 64)}
    config = ExperimentConfig(model=model, model_kwargs=kwargs, bottleneck_dim=32, seed=0)
    fed = FedConfig(num_clients=args.clients, clients_per_round=args.clients, partition="dirichlet", dirichlet_alpha=0.5,
                    local_epochs=args.local_epochs, local_batch_size=args.batch_size, client_lr=0.05)
    clients = make_clients(config, fed)
    sizes = [c.num_examples for c in clients]
    spec = local_training(config, fed, 10)
    shape = (16, 16, 1)
    params = init_global_params(config, fed, spec, shape)
    tx = server_optimizer("sgd", 1.0)
    n_max, ids = max(sizes), np.arange(args.clients)
    data, cids = place_clients(stack_clients([c.data for c in clients], max_examples=n_max), ids, None)
    key = jax.random.key(0)
    convs = model_has_convolutions(spec.model, shape)

    def compiled(execution: Execution):
        round_fn = make_round_fn(spec, tx, n_max, strategy=execution)

        def fn(p, s, r):
            p, s, _ = round_fn(p, s, data, cids, jax.random.fold_in(key, r))
            return jax.block_until_ready((p, s))

        return fn

    def loop(p, s, r):
        out = reference_round(spec, tx, p, s, [c.data for c in clients], [True] * len(clients), ids,
                              jax.random.fold_in(key, r), n_max)
        return jax.block_until_ready(out)

    engines = {}
    for name in args.strategies.split(","):
        if name == "loop":
            engines["loop"] = loop
            continue
        ex = resolve_execution(name, args.chunk if name == "chunk" else None, convs)
        label = f"chunk{ex.chunk}" if name == "chunk" else name
        engines[label] = compiled(ex)
        if args.plain_convs and ex.loop_convs:
            engines[label + "_plainconvs"] = compiled(Execution(ex.kind, ex.chunk, loop_convs=False))
    info = {"client_sizes_min_median_max": [min(sizes), int(np.median(sizes)), max(sizes)], "padded_length": n_max,
            "real_local_steps": int(sum(args.local_epochs * -(-n // args.batch_size) for n in sizes)),
            "padded_local_steps": args.clients * args.local_epochs * -(-n_max // args.batch_size), "has_convolutions": convs}
    return engines, (params, tx.init(params)), info


def time_model(model: str, args: argparse.Namespace) -> dict[str, object]:
    """Warm-up round per engine, then ``args.rounds`` interleaved timed rounds."""
    engines, (p0, s0), info = build_engines(model, args)
    state, warm, times = {}, {}, {name: [] for name in engines}
    for name, fn in engines.items():
        t0 = time.perf_counter()
        state[name] = fn(p0, s0, 0)
        warm[name] = time.perf_counter() - t0
    for r in range(1, args.rounds + 1):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            state[name] = fn(*state[name], r)
            times[name].append(time.perf_counter() - t0)
    out = {"model": model, **info, "engines": {}}
    ref = state.get("loop")
    for name in engines:
        row = {"warmup_round_s": warm[name], "round_s": quartiles(times[name]), "all_round_s": times[name]}
        if ref is not None and name != "loop":
            row["loop_over_engine"] = quartiles([a / b for a, b in zip(times["loop"], times[name])])
            row["max_abs_param_diff_vs_loop"] = max(
                float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state[name][0]), jax.tree.leaves(ref[0])))
        out["engines"][name] = row
    return out


def print_table(report: dict[str, object]) -> None:
    """A markdown table of one model's engines."""
    print(f"\n{report['model']}: sizes min/median/max {report['client_sizes_min_median_max']}, "
          f"real local steps {report['real_local_steps']}, padded {report['padded_local_steps']}")
    print("| engine | s / round, median [IQR] | loop / engine, median [IQR] | compile+1st round s | max |diff| vs loop |")
    print("|---|---|---|---|---|")
    for name, row in report["engines"].items():
        t, r = row["round_s"], row.get("loop_over_engine")
        ratio = f"{r['median']:.2f}x [{r['q1']:.2f}, {r['q3']:.2f}]" if r else "1"
        diff = f"{row['max_abs_param_diff_vs_loop']:.1e}" if "max_abs_param_diff_vs_loop" in row else "-"
        print(f"| {name} | {t['median']:.4f} [{t['q1']:.4f}, {t['q3']:.4f}] | {ratio} | {row['warmup_round_s']:.1f} | {diff} |")


def main() -> None:
    """Parses the flags, times every model and prints the tables (and JSON with ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet,mlp", help="comma list of lenet (8, 16 channels), mlp (64, 64)")
    ap.add_argument("--strategies", default="vmap,scan,chunk,loop", help="comma list of vmap, scan, chunk, loop")
    ap.add_argument("--chunk", type=int, default=10, help="clients per chunk of the chunk strategy")
    ap.add_argument("--plain-convs", action="store_true", help="also time the compiled strategies with XLA's own conv gradients")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timed rounds per engine (after one warm-up round)")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--gpu-check", action="store_true",
                    help="the accelerator check: 100 clients, LeNet and MLP, vmap vs loop; fails without a GPU")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    if args.gpu_check:
        if jax.default_backend() != "gpu":
            raise SystemExit(f"--gpu-check needs a GPU backend; JAX's default backend is {jax.default_backend()!r}")
        args.models, args.strategies, args.clients = "lenet,mlp", "vmap,loop", 100

    report = {"machine": machine(), "args": vars(args), "models": []}
    print(json.dumps(report["machine"], indent=1))
    for model in args.models.split(","):
        report["models"].append(time_model(model, args))
        print_table(report["models"][-1])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
