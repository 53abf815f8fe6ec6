"""End-to-end ``train()`` throughput on a real experiment: what a user of ``da run`` gets.

Run by hand (not part of the tests); needs the real MNIST and USPS (``DA_DATA_DIR``):

    DA_DATA_DIR=../shared/data PYTHONPATH=$PWD python benchmarks/train_throughput.py \\
        --experiment mnist_usps_short --methods source_only,dann --steps 1000 --repeats 2

Times ``da_framework.train.loop.train`` on the experiment's own config (model, batch, data
pipeline, prefetching, logging, evaluation every ``--eval-every`` steps and at the end) with
``steps`` overridden, and reports examples/s over the whole run (source + target examples
trained on per wall-clock second, compilation and evaluation included) and the final target
accuracy (so that a faster run that learns something else is visible).  Run it from two
checkouts (``PYTHONPATH=<old checkout>``) to compare code versions on the same data, or with
``DA_XLA_CPU_DEFAULTS=0`` to see what the default XLA flags buy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

from da_framework.experiment_files import load_experiment
from da_framework.results import cpu_model
from da_framework.train.loop import train


def main() -> None:
    """Parses arguments, trains, prints one line per method and optionally writes JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="mnist_usps_short")
    ap.add_argument("--methods", default="source_only,dann")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2, help="runs per method (median reported)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base = load_experiment(args.experiment)
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        config = dataclasses.replace(base, method=method, steps=args.steps, eval_every=args.eval_every)
        walls, accs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = train(config)
            walls.append(time.perf_counter() - start)
            accs.append(result.metrics["target_test_accuracy"])
        wall = statistics.median(walls)
        eps = 2 * config.batch_size * config.steps / wall
        rows.append({"method": method, "steps": config.steps, "batch": config.batch_size, "walls_s": walls,
                     "examples_per_s": eps, "target_test_accuracy": accs})
        print(f"{args.experiment} {method}: {config.steps} steps of {config.batch_size}/domain, wall {wall:.1f}s "
              f"(runs {[round(w, 1) for w in walls]}), {eps:,.0f} ex/s, target acc {accs}", flush=True)
    env = {"cpu": cpu_model(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "cores": len(os.sched_getaffinity(0)),
           "load_average": os.getloadavg()}
    print(f"cpu {env['cpu']!r}, {env['cores']} cores, XLA_FLAGS={env['xla_flags']!r}, load {env['load_average']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"experiment": args.experiment, "environment": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
