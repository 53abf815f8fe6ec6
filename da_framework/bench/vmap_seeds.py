"""K seeds of one run as a single ``jax.vmap``-ed program.

:func:`train_seeds` trains ``config`` for every seed in ``seeds`` at once: the K train
states are stacked along a leading axis and one compiled step, ``jax.vmap`` of the usual
pure step, advances all of them.  Each seed keeps exactly what a separate :func:`train`
run with that seed uses -- its initialisation key, its step keys and its data order (the
source stream seeded ``2*seed``, the target stream ``2*seed + 1``) -- so the metrics equal K
separate runs up to floating-point reassociation in the batched kernels.

How the K steps run in the one program is ``execution``: ``"vmap"`` (one batched step;
a convolution over K weight sets becomes a grouped convolution) or ``"unroll"`` (the K
seeds' steps written out one after another in the same compiled program: each seed runs
the ops of a separate run).  ``"auto"`` (the default) picks ``"unroll"`` on CPU, where
XLA's grouped convolutions are slow (measured on the 2-core Intel Xeon:
``benchmarks/dg_vmap_trials.py``: 3 vmapped MNIST_CNN IRM trials took 218.7 s against
159.4 s as separate runs), and ``"vmap"`` on accelerators.

Only seeds are batched here; runs that also differ in learning rate or loss numbers share a
program through :mod:`da_framework.bench.vmap_samples` (the same loop, :func:`stacked_training`).  Multi-device meshes and checkpointing are not
supported here (``num_devices`` must be 1, ``checkpoint_every`` 0).  Several sources and
targets are (the streams are the loop's own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from da_framework.config import ConfigError, ExperimentConfig
from da_framework.train.evaluate import make_predict_fn
from da_framework.train.loop import (
    Experiment,
    RunResult,
    batch_streams,
    build,
    check_finite,
    evaluate_state,
    init_state,
)
from da_framework.train.source_augment import trainer_step
from da_framework.train.target_pass import TargetPassStep


def _stack(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(np.stack([b[k] for b in batches])) for k in batches[0]}


EXECUTIONS = ("auto", "vmap", "unroll")


def resolve_execution(execution: str, backend: str | None = None) -> str:
    """``"vmap"`` or ``"unroll"`` for ``execution`` on ``backend`` (default: JAX's); module doc.

    Raises:
      ConfigError: for a name not in :data:`EXECUTIONS`.
    """
    if execution not in EXECUTIONS:
        raise ConfigError(f"unknown seed execution {execution!r}; valid: {', '.join(EXECUTIONS)}")
    if execution != "auto":
        return execution
    return "unroll" if (backend or jax.default_backend()) == "cpu" else "vmap"


def unrolled(step: Any, k: int) -> Any:
    """``step`` applied to each of the ``k`` leading-axis slices of its arguments, outputs stacked.

    Same signature and results as ``jax.vmap(step)``, but each slice runs the unbatched ops.
    """

    def run(*args: Any) -> Any:
        outs = [step(*jax.tree.map(lambda x, i=i: x[i], args)) for i in range(k)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return run


def train_seeds(config: ExperimentConfig, seeds: Sequence[int], execution: str = "auto") -> list[RunResult]:
    """Trains ``config`` for each of ``seeds`` in one compiled program (vmapped or unrolled).

    Built from the loop's pieces (:func:`~da_framework.train.loop.build`, ``batch_streams``,
    ``init_state``, ``evaluate_state``, ``check_finite``), so a seed here is the run
    :func:`~da_framework.train.train` makes with it, several sources and targets included.

    Args:
      config: the run config (its ``seed`` is ignored; ``seeds`` are used).
      seeds: the K seeds.
      execution: ``"auto"``, ``"vmap"`` or ``"unroll"`` (module doc).

    Returns:
      one :class:`RunResult` per seed, in order; ``wall_time_s`` is the shared total and
      ``compile_count`` counts traces of the shared step.

    Raises:
      ConfigError: for an empty or repeated seed list, multi-device or checkpointing configs, or a
        trainer with target passes (SHOT).
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct seeds, got {seeds}")
    if config.num_devices != 1 or config.checkpoint_every:
        raise ConfigError("vmapped seeds need num_devices=1 and checkpoint_every=0; run seeds separately otherwise")
    start = time.perf_counter()
    exp = build(config)
    if isinstance(trainer_step(exp.step), TargetPassStep):
        raise ConfigError(f"trainer of {config.method!r} reads the whole target split between steps "
                          "(train/target_pass.py), which vmapped seeds do not run; run its seeds separately")
    return stacked_training(exp, [config.replace(seed=s) for s in seeds], lambda _, *args: exp.step(*args), {},
                            execution, start)


def stacked_training(exp: Experiment, configs: Sequence[ExperimentConfig], step: Callable[..., Any],
                     table: Mapping[str, jax.Array], execution: str = "auto", start: float | None = None
                     ) -> list[RunResult]:
    """The loop of :func:`train_seeds` and :func:`~da_framework.bench.vmap_samples.train_samples`.

    Run ``k`` is ``configs[k]`` (its seed gives its keys and data streams); ``step(values, state,
    source, target, key)`` is one run's step, where ``values`` is run ``k``'s slice of ``table``
    (arrays with a leading axis of K); the K steps run vmapped or unrolled per ``execution``.
    Evaluation, logging and the finite checks are ``exp``'s, which every config shares.
    ``start``: the ``perf_counter`` time the shared ``wall_time_s`` counts from (default now).
    """
    mode = resolve_execution(execution)
    start = time.perf_counter() if start is None else start
    config, seeds = exp.config, [c.seed for c in configs]
    streams = [batch_streams(exp, s, config.batch_size) for s in seeds]
    keys = [jax.random.split(jax.random.key(s)) for s in seeds]  # per seed: (init key, step key), as in train()
    key_init = jnp.stack([k[0] for k in keys])
    key_steps = jnp.stack([k[1] for k in keys])

    def next_batches() -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        return _stack([next(src) for src, _ in streams]), _stack([next(tgt) for _, tgt in streams])

    s_batch, t_batch = next_batches()
    states = jax.jit(jax.vmap(lambda k, s, t: init_state(exp, k, s, t)))(key_init, s_batch, t_batch)

    traces = [0]

    def counted_step(*args: Any) -> Any:
        traces[0] += 1
        return (jax.vmap(step) if mode == "vmap" else unrolled(step, len(configs)))(dict(table), *args)

    step_fn = jax.jit(counted_step, donate_argnums=0)
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    predict = make_predict_fn(exp.model)

    def run_eval(k: int) -> dict[str, Any]:
        return evaluate_state(exp, jax.tree.map(lambda x: x[k], states), predict)

    histories: list[list[dict[str, Any]]] = [[] for _ in configs]
    for i in range(config.steps):
        states, metrics = step_fn(states, s_batch, t_batch, fold(key_steps, i))
        if (i + 1) % config.log_every == 0 or i + 1 == config.steps:
            fetched = jax.device_get(metrics)
            for k, c in enumerate(configs):
                logged = {name: float(v[k]) for name, v in fetched.items()}
                check_finite(i + 1, logged, c.learning_rate)
                histories[k].append({"step": i + 1, **logged})
        if config.eval_every and (i + 1) % config.eval_every == 0 and i + 1 < config.steps:
            for k in range(len(configs)):
                histories[k].append({"step": i + 1, **run_eval(k)})
        if i + 1 < config.steps:
            s_batch, t_batch = next_batches()

    results = []
    wall = time.perf_counter() - start
    for k, c in enumerate(configs):
        final = run_eval(k)
        histories[k].append({"step": config.steps, **final})
        results.append(RunResult(c, final, histories[k], jax.tree.map(lambda x, k=k: x[k], states), wall, traces[0]))
    return results
