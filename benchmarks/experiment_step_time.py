"""Milliseconds per compiled training step of one experiment, on its real batches, and one evaluation.

Builds the experiment exactly as ``da run`` does (``da_framework.train.loop.build``), compiles
its step on the first batch pair, then times ``--steps`` steps on that pair (no input
pipeline, no logging) and one full evaluation (``evaluate_state``).  For comparing step
variants on the same config, e.g. the DomainBed protocol with and without the target pass:

    DA_DATA_DIR=../shared/data PYTHONPATH=$PWD python benchmarks/experiment_step_time.py cmnist_dg \\
        --method cross_entropy --set forward_target=True --set forward_target=False

Each ``--set`` value is timed in turn in the same process (none: the config as it is).
"""

from __future__ import annotations

import argparse
import ast
import functools
import os
import time

import jax


def main() -> None:
    """Parses arguments, times each variant, prints one line per variant."""
    from da_framework.experiment_files import load_experiment
    from da_framework.results import cpu_model
    from da_framework.train import loop

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("--method", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="key=value, one variant each")
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args()
    base = load_experiment(args.experiment).replace(eval_every=0)
    if args.method:
        base = base.replace(method=args.method)
    print(f"{cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for variant in args.set or [""]:
        overrides = {}
        if variant:
            key, _, value = variant.partition("=")
            try:
                overrides[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                overrides[key] = value
        config = base.replace(**overrides)
        exp = loop.build(config)
        src, tgt = loop.batch_streams(exp, 0, config.batch_size)
        s, t = next(src), next(tgt)
        key = jax.random.key(0)
        state = jax.jit(functools.partial(loop.init_state, exp))(key, s, t, None)
        step = jax.jit(exp.step, donate_argnums=0)
        state, metrics = step(state, s, t, key)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, s, t, key)
        jax.block_until_ready(metrics)
        ms = (time.perf_counter() - start) / args.steps * 1e3
        line = f"{args.experiment} {config.method} {variant or '(as configured)'}: {ms:.0f} ms/step over {args.steps} steps"
        if not args.no_eval:
            start = time.perf_counter()
            loop.evaluate_state(exp, state)
            line += f"; one evaluation {time.perf_counter() - start:.1f} s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
