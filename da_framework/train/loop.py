"""The training loop: config in, metrics out, in four pieces read top to bottom.

``train(config)`` runs :func:`build` (the domains, model, method, optimiser and train step
named by the config), :func:`init_state`, the step loop (compiled once), and
:func:`evaluate_state`; the vmapped-seeds runner (:mod:`da_framework.bench.vmap_seeds`) reuses
the same pieces and :func:`check_finite`.  Evaluation reports:

* ``target_test_accuracy`` / ``target_test_per_class_accuracy``: the headline numbers;
* ``source_val_accuracy``: the model-selection signal that needs no target labels.

Randomness comes only from ``jax.random.key(config.seed)`` and NumPy generators seeded by
``config.seed``, so a run is reproducible from its config.  Metrics are fetched from the
device only every ``log_every`` steps.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from da_framework.config import ExperimentConfig
from da_framework.data.domain import INDEX, Domain, DomainError, batch_iterator
from da_framework.data.prefetch import prefetch_to_device
from da_framework.data.registry import get_domain
from da_framework.models.registry import LOAD_KEYS, build_kwargs, make_model
from da_framework.train.checkpoint import open_checkpoints, restore_latest, save_checkpoint
from da_framework.train.evaluate import evaluate, make_predict_fn, predict_split
from da_framework.train.finite import NonFiniteLossError, check_finite, first_bad_step  # noqa: F401 (NonFiniteLossError: re-exported)
from da_framework.train.method import Method, parse_method
from da_framework.train.optimizers import make_optimizer
from da_framework.train.parallel import ParallelError, make_mesh, replicate, shard_batch
from da_framework.train.source_augment import trainer_step, with_source_augment
from da_framework.train.state import TrainState, init_train_state
from da_framework.train.step import TrainStep, switches_learning_rate
from da_framework.train.target_pass import TargetPassStep, target_outputs
from da_framework.train.trainers import get_trainer

LogFn = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
      config: the resolved config.
      metrics: final evaluation metrics (floats and lists of floats).
      history: logged training metrics and periodic evaluations, one dict per entry.
      state: the final train state.
      wall_time_s: seconds from start to end of training and evaluation.
      compile_count: times the train step was traced (1 for a healthy run).
      pretrained: what ``model_kwargs["pretrained"]`` loaded after initialisation (a
        :class:`~da_framework.transfer.weights.TransferReport`), or None.
    """

    config: ExperimentConfig
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    state: TrainState
    wall_time_s: float
    compile_count: int
    pretrained: Any = None


def joint_batches(
    domains: list[Domain], batch_size: int, seed: int, fields: tuple[str, ...], reading: dict[str, int]
) -> Any:
    """Batches of ``batch_size`` examples from each domain's train split, concatenated in domain order.

    One domain: its own :func:`batch_iterator` stream with ``seed`` (the two-domain runs'
    stream).  Domain i > 0 reads with seed ``seed + 1_000_003 * i``.
    """
    its = [
        batch_iterator(d.split("train"), batch_size, seed=seed + 1_000_003 * i, fields=fields, **reading)
        for i, d in enumerate(domains)
    ]
    if len(its) == 1:
        return its[0]
    return ({k: np.concatenate([b[k] for b in parts]) for k in parts[0]} for parts in zip(*its))


def check_domain_pair(source: Domain, target: Domain) -> None:
    """Checks that two domains can be paired (same input shape, modality, classes)."""
    if source.input_shape != target.input_shape or source.modality != target.modality:
        raise DomainError(
            f"domains {source.name!r} {source.input_shape} and {target.name!r} {target.input_shape} "
            "have different inputs; pick a pair with the same input shape (see `da list`)"
        )
    if source.num_classes != target.num_classes:
        raise DomainError(
            f"domains {source.name!r} ({source.num_classes} classes) and {target.name!r} "
            f"({target.num_classes} classes) have different label sets"
        )


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What one run is built from: the config's domains, model, method, optimiser and step.

    Attributes:
      config: the experiment config.
      sources, targets: the labelled and unlabelled domains, in config order.
      model: the classifier.
      method: the parsed method.
      tx: the optimiser.
      step: the pure train step of the method's trainer (not jitted).
    """

    config: ExperimentConfig
    sources: tuple[Domain, ...]
    targets: tuple[Domain, ...]
    model: Any
    method: Method
    tx: optax.GradientTransformation
    step: TrainStep

    @property
    def input_key(self) -> str:
        """The batch field holding model inputs (``"image"`` or ``"text"``)."""
        return self.sources[0].input_key


def build(config: ExperimentConfig) -> Experiment:
    """Build: the domains, model, method, optimiser and train step a config names."""
    sources = tuple(get_domain(n, config.data_dir) for n in config.source_names)
    targets = tuple(get_domain(n, config.data_dir) for n in config.target_names)
    for other in sources[1:] + targets:
        check_domain_pair(sources[0], other)
    method = parse_method(config.method)
    model = make_model(config.model, sources[0].num_classes, config.bottleneck_dim, config.bottleneck_norm, **build_kwargs(config.model_kwargs))
    tx = make_optimizer(config, inject_learning_rate=switches_learning_rate(method))
    step = make_step(config, model, method, tx, sources, targets)
    return Experiment(config, sources, targets, model, method, tx, step)


def make_step(config: ExperimentConfig, model: Any, method: Any, tx: optax.GradientTransformation,
              sources: tuple[Any, ...], targets: tuple[Any, ...]) -> Any:
    """The train step of ``config``'s trainer for ``method`` and ``tx``, with its source augmentation.

    :func:`build`'s last part; the vmapped-samples runner (:mod:`da_framework.bench.vmap_samples`)
    calls it with a method and optimiser whose numbers are traced arrays.
    """
    step = get_trainer(config.trainer, method, config.forward_target)(
        model, method, tx, config.steps, input_key=sources[0].input_key, compute_dtype=config.compute_dtype,
        num_sources=len(sources), num_targets=len(targets),
    )
    if (check := getattr(step, "check_config", None)) is not None:  # a trainer refusing settings it cannot honour
        check(config)
    return with_source_augment(step, config.source_augment, sources[0].input_key, sources[0].input_shape)


def batch_streams(exp: Experiment, stream: int, batch_size: int) -> tuple[Any, Any]:
    """The source and target batch iterators of data stream ``stream`` (a run's seed on one host).

    The source stream is seeded ``2 * stream``, the target stream ``2 * stream + 1``.
    """
    c, x_key = exp.config, exp.input_key
    reading = {"workers": c.data_workers, "read_threads": c.data_threads}
    src = joint_batches(list(exp.sources), batch_size, 2 * stream, (x_key, "label"), reading)
    t_fields = (x_key, INDEX) if isinstance(trainer_step(exp.step), TargetPassStep) else (x_key,)
    tgt = joint_batches(list(exp.targets), batch_size, 2 * stream + 1, t_fields, reading)
    return src, tgt


def init_state(
    exp: Experiment, key: jax.Array, source_batch: Any, target_batch: Any, pretrained: dict[str, Any] | None = None
) -> TrainState:
    """Init: the train state from the first batches (shapes as in training).

    ``pretrained``: leaves that replace the initial model variables (:func:`load_pretrained_for`);
    needed when the config's ``model_kwargs`` name a ``pretrained`` file.
    """
    if pretrained is None and any(k in exp.config.model_kwargs for k in LOAD_KEYS):
        from da_framework.transfer.pretrained import PretrainedError

        raise PretrainedError("model_kwargs 'pretrained' is loaded by train(); this runner initialises without it")
    x_key = exp.input_key
    return init_train_state(
        key, exp.model, exp.method, exp.tx, source_batch[x_key], target_batch[x_key], source_batch["label"],
        pretrained=pretrained, num_sources=len(exp.sources), num_targets=len(exp.targets),
    )


def load_pretrained_for(exp: Experiment, key: jax.Array, source_batch: Any, target_batch: Any) -> tuple[Any, Any]:
    """``(values, report)`` of the file named by ``model_kwargs["pretrained"]``, converted for
    the model (checked against its initial shapes, not initialised), or ``(None, None)``."""
    if not any(k in exp.config.model_kwargs for k in LOAD_KEYS):
        return None, None
    from da_framework.transfer.pretrained import load_for_training

    joint = jnp.concatenate([source_batch[exp.input_key], target_batch[exp.input_key]])
    values, report = load_for_training(exp.model, exp.config.model, exp.config.model_kwargs, key, joint)
    print(f"pretrained {exp.config.model_kwargs['pretrained']} -> {exp.config.model}: {report.summary()}")
    return values, report


def evaluate_state(exp: Experiment, state: TrainState, predict: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Evaluate: target test and source validation accuracies of ``state``'s model.

    With several targets each is reported as ``target_test_accuracy/<name>`` and the headline
    ``target_test_accuracy`` is their unweighted mean; likewise ``source_val_accuracy``, and
    ``target_val_accuracy`` (the targets' val splits) when ``config.eval_target_val``.
    """
    config, x_key = exp.config, exp.input_key
    predict = predict or make_predict_fn(exp.model)
    variables = {"params": state.params["model"], **state.model_state}
    out: dict[str, Any] = {}
    reading = (config.data_workers, config.data_threads)
    tgt = [evaluate(predict, variables, t.split("test"), t.num_classes, config.eval_batch_size, x_key, *reading)
           for t in exp.targets]
    src = [evaluate(predict, variables, s.split("val"), s.num_classes, config.eval_batch_size, x_key, *reading)
           for s in exp.sources]
    if len(exp.targets) > 1:
        for name, t in zip(config.target_names, tgt):
            out[f"target_test_accuracy/{name}"] = t["accuracy"]
    out["target_test_accuracy"] = float(np.mean([t["accuracy"] for t in tgt]))
    if len(exp.targets) == 1:
        out["target_test_per_class_accuracy"] = tgt[0]["per_class_accuracy"]
    out["target_test_mean_class_accuracy"] = float(np.mean([t["mean_class_accuracy"] for t in tgt]))
    if config.eval_target_val:
        tval = [evaluate(predict, variables, t.split("val"), t.num_classes, config.eval_batch_size, x_key, *reading)
                for t in exp.targets]
        if len(exp.targets) > 1:
            for name, t in zip(config.target_names, tval):
                out[f"target_val_accuracy/{name}"] = t["accuracy"]
        out["target_val_accuracy"] = float(np.mean([t["accuracy"] for t in tval]))
    if len(exp.sources) > 1:
        for name, v in zip(config.source_names, src):
            out[f"source_val_accuracy/{name}"] = v["accuracy"]
    out["source_val_accuracy"] = float(np.mean([v["accuracy"] for v in src]))
    if config.eval_validators:
        out.update(validator_scores(exp, predict, variables))
    return out




def validator_scores(exp: Experiment, predict: Callable[..., Any], variables: dict[str, Any]) -> dict[str, float]:
    """``validator/<name>`` of :func:`da_framework.bench.selection.label_free_scores` on the pooled
    source val splits and target train splits (config ``eval_validators``)."""
    from da_framework.bench.selection import VALIDATOR_TARGET_EXAMPLES, label_free_scores

    c = exp.config

    def pooled(domains: tuple[Any, ...], split: str) -> dict[str, np.ndarray]:
        parts = [predict_split(predict, variables, d.split(split), c.eval_batch_size, exp.input_key, c.data_workers,
                               c.data_threads) for d in domains]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    scores = label_free_scores(pooled(exp.sources, "val"), pooled(exp.targets, "train"), seed=c.seed,
                               max_target=VALIDATOR_TARGET_EXAMPLES)
    return {f"validator/{k}": v for k, v in scores.items()}


def train(config: ExperimentConfig, on_log: LogFn | None = None) -> RunResult:
    """Trains and evaluates one run described by ``config``: build, init, run, evaluate.

    Args:
      config: the experiment config.
      on_log: called as ``on_log(step, metrics)`` every ``config.log_every`` steps
        (progress bars use it).

    Returns:
      a :class:`RunResult`.
    """
    start = time.perf_counter()
    exp = build(config)

    # Several hosts (jax.distributed): each reads its own stream of batch_size / hosts.
    hosts, stream = jax.process_count(), config.seed * jax.process_count() + jax.process_index()
    if config.batch_size % hosts:
        raise ParallelError(f"batch_size {config.batch_size} does not split over {hosts} processes")
    src_it, tgt_it = batch_streams(exp, stream, config.batch_size // hosts)

    key_init, key_steps = jax.random.split(jax.random.key(config.seed))
    first_s, first_t = next(src_it), next(tgt_it)
    pretrained, pretrained_report = load_pretrained_for(exp, key_init, first_s, first_t)
    state = jax.jit(functools.partial(init_state, exp))(key_init, first_s, first_t, pretrained)
    history: list[dict[str, Any]] = []
    s_batch, t_batch = first_s, first_t
    passes = trainer_step(exp.step) if isinstance(trainer_step(exp.step), TargetPassStep) else None
    if passes is not None:  # per-example state sized before the step compiles (train/target_pass.py)
        if len(exp.targets) != 1:
            raise DomainError(f"trainer {config.trainer!r} of {config.method!r} reads one target domain, got "
                              f"{len(exp.targets)}; name one target")
        pass_split = exp.targets[0].split("train")
        state = passes.prepare(state, len(pass_split))
    ckpt, start_step = open_checkpoints(config), 0
    restored = restore_latest(ckpt, state, config) if ckpt is not None else None
    if restored is not None:  # resume: data streams are deterministic, fast-forward them
        state, history, start_step = restored
        for _ in range(start_step):
            s_batch, t_batch = next(src_it), next(tgt_it)

    traces = [0]

    def counted_step(state: TrainState, s: Any, t: Any, base_key: jax.Array, first_bad: jax.Array) -> Any:
        traces[0] += 1  # runs at trace time only: counts compilations
        # The per-step key is derived inside the compiled step (one dispatch per step).
        new_state, metrics = exp.step(state, s, t, jax.random.fold_in(base_key, state.step))
        # The first step whose loss is non-finite, kept on the device: no host sync per step.
        first_bad = first_bad_step(first_bad, state.step + 1, {k: v for k, v in metrics.items() if k.startswith("loss")})
        return new_state, metrics, first_bad

    step_fn = jax.jit(counted_step, donate_argnums=0)
    first_bad = jnp.zeros((), jnp.int32)
    mesh = make_mesh(config.num_devices) if config.num_devices > 1 else None
    place = (lambda b: shard_batch(b, mesh)) if mesh is not None else jax.device_put
    if mesh is not None:
        state, key_steps, first_bad = replicate((state, key_steps, first_bad), mesh)

    # Batches reach the devices ``device_prefetch`` steps ahead (asynchronous device_put),
    # so host-to-device copies overlap the running step; nothing waits on the device
    # except the metric fetch every ``log_every`` steps, evaluation and checkpoints.
    batches = prefetch_to_device(
        itertools.chain([(s_batch, t_batch)], zip(src_it, tgt_it)),
        config.device_prefetch,
        lambda pair: (place(pair[0]), place(pair[1])),
    )
    predict = make_predict_fn(exp.model)

    for i in range(start_step, config.steps):
        s_dev, t_dev = next(batches)
        if passes is not None and passes.due(i, len(pass_split), config.batch_size):
            outputs = target_outputs(exp.model, state, pass_split, config.eval_batch_size, exp.input_key, predict,
                                     config.data_workers, config.data_threads)
            state = passes.refresh(state, outputs)
            if mesh is not None:
                state = replicate(state, mesh)
        state, metrics, first_bad = step_fn(state, s_dev, t_dev, key_steps, first_bad)
        if (i + 1) % config.log_every == 0 or i + 1 == config.steps:
            fetched, bad_step = jax.device_get((metrics, first_bad))
            logged = {k: float(v) for k, v in fetched.items()}
            check_finite(i + 1, logged, config.learning_rate, int(bad_step))
            history.append({"step": i + 1, **logged})
            if on_log is not None:
                on_log(i + 1, logged)
        if config.eval_every and (i + 1) % config.eval_every == 0 and i + 1 < config.steps:
            history.append({"step": i + 1, **evaluate_state(exp, state, predict)})
        if ckpt is not None and (i + 1) % config.checkpoint_every == 0 and i + 1 < config.steps:
            save_checkpoint(ckpt, i + 1, state, history, config)

    if ckpt is not None:
        ckpt.close()
    final = evaluate_state(exp, state, predict)
    history.append({"step": config.steps, **final})
    return RunResult(config, final, history, state, time.perf_counter() - start, traces[0], pretrained_report)


def params_checksum(state: TrainState) -> float:
    """Sum of absolute parameter values: a cheap fingerprint for determinism checks."""
    return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(state.params)))
