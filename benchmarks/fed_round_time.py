"""Wall time per federated round: the vmapped engine vs the sequential reference loop.

100 clients (Dirichlet(0.5) label skew over the embedded ``digits/source`` train split, so
client sizes are uneven), all taking part every round, a small LeNet or MLP, E local
epochs of batch B.  Both engines run in the same process on the same data; compilation is excluded
(one warm-up round each, whose time is reported separately).  The script also checks that
the two give the same global model.

Engines: ``vmapped`` (all clients in one vmap), ``compiled_chunk<k>`` (one compiled
program, ``jax.lax.map`` over chunks of k vmapped clients) and ``sequential`` (the Python
reference loop).

Run:  nice -n 10 python benchmarks/fed_round_time.py --clients 100 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
    """Times both engines and prints the ratio."""
    from da_framework.config import ExperimentConfig
    from da_framework.federated.algorithms import server_optimizer
    from da_framework.federated.config import FedConfig
    from da_framework.federated.runner import init_global_params, local_training, make_clients
    from da_framework.federated.simulation import make_round_fn, place_clients, stack_clients

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from federated_reference import reference_round  # the sequential definition, kept with the tests

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per engine (after one warm-up round)")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    ap.add_argument("--model", default="lenet", choices=["lenet", "mlp"], help="lenet (8, 16) channels or mlp (64, 64)")
    ap.add_argument("--chunks", default="none,1,10", help="client_chunk settings of the compiled engine (none = full vmap)")
    args = ap.parse_args()

    kwargs = {"channels": (8, 16), "dense": 64} if args.model == "lenet" else {"hidden": (64, 64)}
    config = ExperimentConfig(model=args.model, model_kwargs=kwargs, bottleneck_dim=32, seed=0)
    fed = FedConfig(num_clients=args.clients, clients_per_round=args.clients, partition="dirichlet", dirichlet_alpha=0.5,
                    local_epochs=args.local_epochs, local_batch_size=args.batch_size, client_lr=0.05)
    clients = make_clients(config, fed)
    sizes = [c.num_examples for c in clients]
    spec = local_training(config, fed, 10)
    params = init_global_params(config, fed, spec, (16, 16, 1))
    tx = server_optimizer("sgd", 1.0)
    n_max = max(sizes)
    ids = np.arange(args.clients)
    data, cids = place_clients(stack_clients([c.data for c in clients], max_examples=n_max), ids, None)
    key = jax.random.key(0)

    def compiled(chunk):
        round_fn = make_round_fn(spec, tx, n_max, client_chunk=chunk)

        def fn(p, s, r):
            p, s, _ = round_fn(p, s, data, cids, jax.random.fold_in(key, r))
            return jax.block_until_ready((p, s))

        return fn

    def sequential(p, s, r):
        out = reference_round(spec, tx, p, s, [c.data for c in clients], [True] * len(clients), ids,
                              jax.random.fold_in(key, r), n_max)
        return jax.block_until_ready(out)

    results = {}
    finals = {}
    engines = {}
    for c in args.chunks.split(","):
        chunk = None if c == "none" else int(c)
        engines["vmapped" if chunk is None else f"compiled_chunk{chunk}"] = compiled(chunk)
    engines["sequential"] = sequential
    for name, fn in engines.items():
        p, s = params, tx.init(params)
        t0 = time.perf_counter()
        p, s = fn(p, s, 0)
        warm = time.perf_counter() - t0
        times = []
        for r in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            p, s = fn(p, s, r)
            times.append(time.perf_counter() - t0)
        results[name] = {"warmup_round_s": warm, "round_s": times, "mean_round_s": float(np.mean(times))}
        finals[name] = p
    diff = {
        name: max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(finals["sequential"])))
        for name, p in finals.items() if name != "sequential"
    }
    report = {
        "model": args.model, "clients": args.clients, "client_sizes_min_median_max": [min(sizes), int(np.median(sizes)), max(sizes)],
        "padded_length": n_max, "local_epochs": args.local_epochs, "batch_size": args.batch_size,
        "devices": [str(d) for d in jax.devices()], **results,
        "sequential_over_compiled_time_ratio": {
            name: results["sequential"]["mean_round_s"] / r["mean_round_s"] for name, r in results.items() if name != "sequential"
        },
        "max_abs_param_diff_vs_sequential": diff,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
