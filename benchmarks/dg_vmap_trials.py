"""DomainBed-style trials (and hyper-parameter samples) of one DG run as one program vs separate runs.

Times, in one process, ``train()`` once per seed and ``train_seeds()`` over the same seeds
(each of ``--executions``: vmapped, unrolled), on
a DomainBed-protocol config (``domainbed_dg``: MNIST_CNN, Adam 1e-3, batch 64 per environment,
an evaluation every ``--eval-every`` steps with the target out-split), and writes a JSON record
with the wall times, runs per hour each way, the machine and the versions. It also records
the seeds' final target accuracies beside the separate runs' (equal up to float reassociation).

Run:  python benchmarks/dg_vmap_trials.py --family rdigits --steps 100 --seeds 0 1 2 \\
          --out benchmarks/results/dg_vmap_trials/rdigits_cpu.json

With ``--samples N`` the runs are instead N hyper-parameter samples of ``--algorithm`` x the
seeds, drawn by the DomainBed sweep with a fixed batch size (``--batch-size``, default 64;
``bench/domainbed.py``), and the grouped form is ``train_samples()`` over all of them
(``bench/vmap_samples.py``):

      python benchmarks/dg_vmap_trials.py --family cmnist --algorithm IRM --samples 4 --seeds 0 \\
          --steps 100 --out benchmarks/results/dg_vmap_trials/cmnist_irm_samples4_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np


def main() -> None:
    """Times separate vs vmapped trials and writes the record."""
    from da_framework.bench.domainbed import ENVIRONMENTS, domainbed_dg
    from da_framework.bench.vmap_samples import train_samples
    from da_framework.bench.vmap_seeds import train_seeds
    from da_framework.config import ExperimentConfig
    from da_framework.train import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="rdigits")
    ap.add_argument("--method", default="cross_entropy + irm")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--executions", nargs="+", default=["vmap", "unroll"], help="train_seeds executions to time")
    ap.add_argument("--samples", type=int, default=0, help="N > 0: N DomainBed samples of --algorithm x the seeds")
    ap.add_argument("--algorithm", default="IRM", help="with --samples: a DomainBed algorithm name")
    ap.add_argument("--batch-size", type=int, default=64, help="with --samples: the fixed batch size")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    test_env = ENVIRONMENTS[args.family][0].split("/", 1)[1]
    if args.samples:
        configs = _sampled_configs(args, test_env)
        values = {"sweep": f"domainbed_sweep({args.family!r}, [{args.algorithm!r}], samples={args.samples}, "
                           f"batch_size={args.batch_size}, test_envs=[{test_env!r}])", "eval_every": args.eval_every,
                  "configs": [c.to_dict() for c in configs]}
    else:
        values = {**domainbed_dg(args.family, test_env, args.steps), "eval_every": args.eval_every, "method": args.method}
        configs = [ExperimentConfig(**values).replace(seed=s) for s in args.seeds]
    start = time.perf_counter()
    separate = [train(c) for c in configs]
    wall = {"separate": time.perf_counter() - start}
    accuracies = {"separate": [r.metrics["target_test_accuracy"] for r in separate]}
    for execution in args.executions:
        start = time.perf_counter()
        together = (train_samples(configs, execution=execution) if args.samples
                    else train_seeds(configs[0], args.seeds, execution=execution))
        wall[execution] = time.perf_counter() - start
        accuracies[execution] = [r.metrics["target_test_accuracy"] for r in together]
    k = len(configs)
    record = {
        "format": "da_framework.bench.dg_vmap_trials/3",
        "mode": "samples" if args.samples else "seeds",
        "config": values, "seeds": args.seeds,
        "wall_s": wall,
        "runs_per_hour": {m: 3600 * k / t for m, t in wall.items()},
        "speedup_over_separate": {m: wall["separate"] / t for m, t in wall.items() if m != "separate"},
        "target_test_accuracy": accuracies,
        "max_abs_accuracy_difference": {m: float(np.max(np.abs(np.subtract(accuracies["separate"], a))))
                                        for m, a in accuracies.items() if m != "separate"},
        "machine": {"processor": platform.processor(), "cpu": _cpu_model(), "devices": [str(d) for d in jax.devices()]},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("wall_s", "runs_per_hour", "speedup_over_separate", "max_abs_accuracy_difference")}, indent=1))


def _sampled_configs(args: argparse.Namespace, test_env: str) -> list:
    """The run configs of ``--samples`` DomainBed samples x ``--seeds`` (fixed batch size), evaluation every ``--eval-every``."""
    import tempfile

    from da_framework.bench.domainbed import domainbed_sweep
    from da_framework.bench.sweep import expand_sweep

    sweep = domainbed_sweep(args.family, [args.algorithm], steps=args.steps, samples=args.samples, seeds=tuple(args.seeds),
                            leave_one_out=False, per_trial=False, test_envs=[test_env], batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        return [r.config.replace(eval_every=args.eval_every) for r in expand_sweep(sweep, Path(tmp))]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
