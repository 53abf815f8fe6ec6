"""K hyper-parameter samples of one run as a single compiled program.

A random search (DomainBed's 20 samples x 3 trials) trains many runs that differ only in numbers:
the learning rate, the weight decay, the loss terms' weights and hyper-parameters (``irm_lambda``,
``mmd_gamma``, ...), and the seed.  :func:`train_samples` trains such a group at once.  The K
train states are stacked along a leading axis, as for seeds (:mod:`da_framework.bench.vmap_seeds`,
whose loop this reuses), and the numbers that differ between the K configs enter the step as
**traced arrays**: the step is rebuilt inside the compiled function from a method and an optimiser
whose varying numbers are the sample's slice of a (K,) array, so one program serves every sample.
Numbers that all K share stay Python constants, as in a separate run.

Each sample keeps what its own :func:`~da_framework.train.train` run uses (initialisation key, step
keys and data order from its seed), so its metrics equal the separate run's up to floating-point
reassociation; ``execution`` is ``"vmap"`` (one batched step) or ``"unroll"`` (the K steps one after
another in the program), ``"auto"`` picking unroll on CPU as for seeds.

What may differ (:data:`VARYING_CONFIG_KEYS`, each term's ``weight``, and the numeric
hyper-parameters of stateless terms); everything else must be equal, batch size included, since
it fixes array shapes.  DomainBed samples the batch size (``int(2 ** U(3, 9))``), so its samples
only group when the sweep fixes it (``DA_DG_BATCH_SIZE`` in ``bench/domainbed.py``).  A
hyper-parameter that a loss reads as a Python number (a count, a shape) cannot be traced: tracing
then fails and :func:`train_samples` says which keys varied, so those samples run separately.
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from da_framework.config import ConfigError, ExperimentConfig
from da_framework.losses.registry import get_loss
from da_framework.train.loop import RunResult, build, make_step
from da_framework.train.method import Method, parse_method, unchecked_method
from da_framework.train.optimizers import build_optimizer
from da_framework.train.source_augment import trainer_step
from da_framework.train.step import switches_learning_rate
from da_framework.train.target_pass import TargetPassStep

VARYING_CONFIG_KEYS = ("learning_rate", "weight_decay")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def sample_numbers(config: ExperimentConfig) -> dict[str, float | int]:
    """The numbers of ``config`` that may differ within a group, keyed ``learning_rate``,
    ``weight_decay``, ``<term key>.weight`` and ``<term key>.<hparam>`` (stateless terms'
    numeric hyper-parameters, defaults included; an integer stays an integer)."""
    out: dict[str, float | int] = {k: float(getattr(config, k)) for k in VARYING_CONFIG_KEYS}
    for term in parse_method(config.method).terms:
        out[f"{term.key}.weight"] = float(term.weight)
        spec = get_loss(term.loss)
        if not spec.stateful:
            for name, value in {**spec.hparams, **dict(term.hparams)}.items():
                if _is_number(value):
                    out[f"{term.key}.{name}"] = value if isinstance(value, numbers.Integral) else float(value)
    return out


def skeleton(config: ExperimentConfig) -> tuple[Any, ...]:
    """What must be equal within a group: ``config`` without its seed and :func:`sample_numbers`."""
    terms = []
    for term in parse_method(config.method).terms:
        spec = get_loss(term.loss)
        fixed = {k: v for k, v in {**spec.hparams, **dict(term.hparams)}.items() if spec.stateful or not _is_number(v)}
        terms.append((term.loss, term.key, term.schedule, repr(sorted(fixed.items()))))
    rest = {k: v for k, v in config.to_dict().items() if k not in ("seed", "method", *VARYING_CONFIG_KEYS)}
    return rest, tuple(terms)


def substitute(method: Method, values: Mapping[str, Any]) -> Method:
    """``method`` with the weights and hyper-parameters named in ``values`` (keys as
    :func:`sample_numbers`) replaced by those values, which may be traced arrays."""
    terms = []
    for term in method.terms:
        weight = values.get(f"{term.key}.weight", term.weight)
        names = [n for n in get_loss(term.loss).hparams if f"{term.key}.{n}" in values]
        hparams = {**dict(term.hparams), **{n: values[f"{term.key}.{n}"] for n in names}}
        terms.append(dataclasses.replace(term, weight=weight, hparams=tuple(hparams.items())))
    return unchecked_method(method.name, tuple(terms))


def differing(configs: Sequence[ExperimentConfig]) -> list[str]:
    """The :func:`sample_numbers` keys whose value is not the same in every config, sorted."""
    values = [sample_numbers(c) for c in configs]
    return sorted(k for k in values[0] if len({v[k] for v in values}) > 1)


def check_group(configs: Sequence[ExperimentConfig]) -> None:
    """Raises :class:`ConfigError` unless ``configs`` can train as one program (module doc)."""
    if not configs:
        raise ConfigError("train_samples needs at least one config")
    first = skeleton(configs[0])
    for c in configs[1:]:
        other = skeleton(c)
        if other[1] != first[1]:
            raise ConfigError(f"vmapped samples need the same loss terms (up to numbers): {c.method!r} vs {configs[0].method!r}")
        diff = sorted(k for k in first[0] if first[0][k] != other[0].get(k))
        if diff:
            raise ConfigError(f"vmapped samples may differ only in seed, {', '.join(VARYING_CONFIG_KEYS)} and loss numbers; "
                              f"these differ too: {', '.join(diff)}; run those samples separately")
    keys = [(c.seed, tuple(sorted(sample_numbers(c).items()))) for c in configs]
    if len(set(keys)) != len(keys):
        raise ConfigError("vmapped samples must be distinct runs; two configs have the same seed and numbers")
    if configs[0].num_devices != 1 or configs[0].checkpoint_every:
        raise ConfigError("vmapped samples need num_devices=1 and checkpoint_every=0; run them separately otherwise")


def train_samples(configs: Sequence[ExperimentConfig], execution: str = "auto") -> list[RunResult]:
    """Trains every config of ``configs`` (one group, :func:`check_group`) in one compiled program.

    Args:
      configs: the K run configs; they differ only in seed and :func:`sample_numbers`.
      execution: ``"auto"``, ``"vmap"`` or ``"unroll"`` (:mod:`~da_framework.bench.vmap_seeds`).

    Returns:
      one :class:`RunResult` per config, in order (shared ``wall_time_s`` and ``compile_count``).

    Raises:
      ConfigError: for configs that cannot share a program (the message says what differs), a
        trainer with target passes, or a varying hyper-parameter some code reads as a Python number.
    """
    from da_framework.bench.vmap_seeds import stacked_training

    configs = list(configs)
    check_group(configs)
    start = time.perf_counter()
    exp = build(configs[0])
    if isinstance(trainer_step(exp.step), TargetPassStep):
        raise ConfigError(f"trainer of {configs[0].method!r} reads the whole target split between steps, which vmapped "
                          "samples do not run; run them separately")
    varying = differing(configs)
    if "learning_rate" in varying and switches_learning_rate(exp.method):
        raise ConfigError(f"{configs[0].method!r} keeps its learning rate in the optimiser state (it switches it at a "
                          "reset), so the learning rate cannot vary within one program; run these samples separately")
    numbers_of = [sample_numbers(c) for c in configs]
    table = {k: jnp.asarray([n[k] for n in numbers_of],
                            jnp.int32 if all(isinstance(n[k], numbers.Integral) for n in numbers_of) else jnp.float32)
             for k in varying}
    c0 = exp.config

    def sample_step(values: Mapping[str, jax.Array], state: Any, source: Any, target: Any, key: jax.Array) -> Any:
        method = substitute(exp.method, values)
        tx = build_optimizer(c0.optimizer, values.get("learning_rate", c0.learning_rate), schedule=c0.lr_schedule,
                             steps=c0.steps, weight_decay=values.get("weight_decay", c0.weight_decay),
                             grad_clip=c0.grad_clip, lr_multipliers=c0.lr_multipliers, momentum=c0.momentum,
                             inject_learning_rate=switches_learning_rate(method))
        return make_step(c0, exp.model, method, tx, exp.sources, exp.targets)(state, source, target, key)

    try:
        return stacked_training(exp, configs, sample_step, table, execution, start)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
            jax.errors.TracerIntegerConversionError) as e:
        raise ConfigError(f"a varying number ({', '.join(varying)}) is read as a Python value by the step "
                          f"({type(e).__name__}); run these samples separately") from None


def sample_groups(runs: Sequence[Any], max_size: int = 0) -> list[list[Any]]:
    """Sweep runs (:class:`~da_framework.bench.sweep.RunSpec`) grouped by :func:`skeleton`, in
    order: the runs of one pair and method that differ only in seed and numbers; groups of at
    most ``max_size`` runs (0: no limit)."""
    groups: dict[str, list[Any]] = {}
    for r in runs:
        groups.setdefault(repr(skeleton(r.config.replace(checkpoint_every=0, checkpoint_dir=None))), []).append(r)
    size = max_size or max((len(g) for g in groups.values()), default=1)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def run_sample_group(runs: Sequence[Any], execution: str = "auto") -> list[dict[str, Any]]:
    """Trains one :func:`sample_groups` group as one program and writes each run's record.

    The records' configs have checkpointing off and carry ``"runner": "vmap_samples(k=K, <execution>)"``;
    their metrics equal separate runs up to float reassociation, so ``da reproduce`` of them
    needs a tolerance.
    """
    from da_framework.bench.sweep import write_run
    from da_framework.bench.vmap_seeds import resolve_execution

    configs = [r.config.replace(checkpoint_every=0, checkpoint_dir=None) for r in runs]
    results = train_samples(configs, execution)
    out = []
    for run, result in zip(runs, results):
        result.wall_time_s /= len(runs)
        out.append(write_run(dataclasses.replace(run, config=result.config), result,
                             {"runner": f"vmap_samples(k={len(runs)}, {resolve_execution(execution)})"}))
    return out
