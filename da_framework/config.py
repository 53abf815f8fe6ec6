"""Experiment configuration: one frozen dataclass, validated; :func:`from_dict` and ``--set`` overrides.

An experiment file (``experiments/<name>.py``) defines ``get_config() -> dict`` with any
subset of :class:`ExperimentConfig`'s fields (big_vision style).  Unknown keys are an error
that lists the valid keys.  Finding and importing such files is
:mod:`da_framework.experiment_files`.

A program whose procedure is not "train one method on one domain pair" (weight
transfer, detection, federated) is a *project* (``projects/<name>.py``, as scenic's
``projects/``): it defines::

    def run(results_dir: pathlib.Path, seeds: list[int], steps: int | None) -> list[dict]

returning one flat dict of printable values per table row; ``da run <name>`` calls it.  A
bare name is looked up in ``experiments/`` first, then in ``projects/``; a file in
``experiments/`` that defines ``run()``, or one in ``projects/`` that does not, is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """Raised for an unknown experiment, an unknown config key or an invalid value."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one training run; a run is reproducible from it.

    Attributes:
      name: experiment name (used for result paths).
      source: source domain name (``da list``), or several labelled source domains joined
        by commas (``"usps,mnistm32"``; a Python config may also give a list or tuple,
        stored comma-joined): each step then takes ``batch_size`` examples from each.
      target: target domain name, or several unlabelled target domains joined by commas.
      model: backbone name (``da list``).
      model_kwargs: keyword arguments of the backbone.
      bottleneck_dim: width of the bottleneck layer, or None for none.
      bottleneck_norm: its norm: ``"layer"``, ``"batch"`` (tllib's BatchNorm1d) or ``"none"``.
      method: method spec or preset (``"dann"``, ``"cross_entropy + 0.5*mmd"``), or a
        :class:`~da_framework.train.method.Method` value, stored as its exact spelling
        (``Method.spec()``, which parses back to the same terms).
      trainer: how a step updates the state (:mod:`da_framework.train.trainers`):
        ``"auto"`` (the one the method's terms need, else ``"standard"``), ``"standard"``
        or a method's own (``"mcd"``).
      steps: optimisation steps.
      batch_size: examples per domain per step (source and target each).
      optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (Nesterov momentum ``momentum``).
      momentum: sgd's momentum (default 0.9; 0: plain SGD); unused by adam/adamw.
      learning_rate: peak learning rate.
      lr_schedule: ``"constant"``, ``"cosine"``, ``"inv"`` (DANN's lr/(1+10p)^0.75, p = step/steps)
        or ``"inv:<gamma>"``, lr/(1+gamma*step)^0.75 per step, independent of ``steps``
        (Transfer-Learning-Library's ``LambdaLR``; its digits scripts use gamma 0.001 for
        DANN/CDAN/MCC, 0.0003 for ERM/DAN/JAN, 0.0002 for MDD), or ``"warmup_cosine"`` (5% linear
        warm-up, then cosine decay); see :mod:`da_framework.train.optimizers`.
      weight_decay: weight decay: for sgd added to the gradient before momentum (L2, as
        torch.optim.SGD does); for adamw decoupled (Loshchilov & Hutter); unused by adam.
      grad_clip: global-norm gradient clipping, or None.
      lr_multipliers: ``{regex: scale}`` over parameter paths (``model/backbone/...``,
        ``model/head/...``, ``aux/<term>/...``; first match wins, others 1): per-group learning
        rates, e.g. tllib's ``{"^model/backbone/": 0.1}``; every regex must match a parameter.
      seed: seed of initialisation, data order and every random op.
      eval_every: evaluate every this many steps (0: only at the end).
      eval_batch_size: batch size of evaluation.
      eval_target_val: also evaluate every target's ``val`` split (``target_val_accuracy``):
        for a DG environment its 20% out-split, read by DomainBed's test-domain oracle
        (:mod:`da_framework.bench.dg_selection`).  Off by default: UDA never reads it.
      eval_validators: also score every evaluation with the label-free validators of
        :mod:`da_framework.bench.selection` (IWCV, DEV, target entropy, SND) on the sources'
        val splits and at most 4,000 target train examples (``validator/<name>`` in the
        history), so a checkpoint can be picked by each of them.
      forward_target: run the target batch through the model in the training step (True,
        the default: one joint source + target pass).  False forwards the source batch alone,
        for methods whose terms never read the target (source-only, domain generalisation:
        DomainBed's step sees only the training environments); batch statistics then come from
        the source batch alone.  A term or trainer that reads the target is then a one-line
        error.  The standard trainer only; the DG trainers never forward it anyway.
      source_augment: augmentation of every source batch inside the compiled step, ops joined
        by ``|`` (:mod:`da_framework.data.augment_spec`), e.g. SHOT's USPS source
        ``"random_crop(pad=4, mode='constant') | random_rotation(max_degrees=10, order=0,
        mode='constant')"``; empty (the default): none.  Target batches are never augmented.
      log_every: fetch metrics from the device every this many steps.
      num_devices: data-parallel devices (batch sharded over a 1-D mesh); 1 = one device.
      data_dir: tfds data directory for catalog domains (None: default).
      checkpoint_every: save an orbax checkpoint every this many steps (0: off); a run whose
        ``checkpoint_dir`` holds a checkpoint resumes from the latest one.
      checkpoint_dir: folder of this run's checkpoints (needed when ``checkpoint_every`` > 0).
      compute_dtype: ``"float32"`` or ``"bfloat16"``: the dtype the model computes in
        (parameters, optimiser state and losses stay float32; docs/performance.md).
      device_prefetch: batches placed on the devices ahead of the current step, so their
        host-to-device copies overlap compute (0: none).
      data_workers: grain worker processes reading catalog data (0: in the main process).
      data_threads: grain read-ahead threads per reading process for catalog data.
    """

    name: str = "experiment"
    source: str = "digits/source"
    target: str = "digits/rotate"
    model: str = "lenet"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    bottleneck_dim: int | None = None
    bottleneck_norm: str = "layer"
    method: str = "source_only"
    trainer: str = "auto"
    steps: int = 500
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    learning_rate: float = 0.01
    lr_schedule: str = "inv"
    weight_decay: float = 0.0
    grad_clip: float | None = None
    lr_multipliers: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    eval_every: int = 0
    eval_batch_size: int = 512
    eval_target_val: bool = False
    eval_validators: bool = False
    forward_target: bool = True
    source_augment: str = ""
    log_every: int = 50
    num_devices: int = 1
    data_dir: str | None = None
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    compute_dtype: str = "float32"
    device_prefetch: int = 2
    data_workers: int = 0
    data_threads: int = 4

    def __post_init__(self) -> None:
        from da_framework.train.method import Method  # lazy: train imports this module

        if isinstance(self.method, Method):
            object.__setattr__(self, "method", self.method.spec())
        for key in ("source", "target"):
            names = getattr(self, key)
            if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
                object.__setattr__(self, key, ",".join(names))
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _check_type(field.name, str(field.type), getattr(self, field.name)))
        checks = {
            "steps": self.steps > 0,
            "batch_size": self.batch_size > 0,
            "learning_rate": self.learning_rate > 0,
            "eval_batch_size": self.eval_batch_size > 0,
            "log_every": self.log_every > 0,
            "num_devices": self.num_devices > 0,
            "eval_every": self.eval_every >= 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "device_prefetch": self.device_prefetch >= 0,
            "data_workers": self.data_workers >= 0,
            "data_threads": self.data_threads >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                bound = "> 0" if key in ("steps", "batch_size", "learning_rate", "eval_batch_size", "log_every",
                                         "num_devices") else ">= 0"
                raise ConfigError(f"config key {key!r} has invalid value {getattr(self, key)!r}; it must be {bound}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: adam, adamw, sgd")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"config key 'momentum' has invalid value {self.momentum!r}; it must be in [0, 1)")
        if self.optimizer == "adam" and self.weight_decay:
            raise ConfigError(
                f"optimizer 'adam' has no weight decay, so weight_decay={self.weight_decay!r} would be ignored; "
                "use optimizer='adamw' (decoupled) or 'sgd' (L2), or set weight_decay=0"
            )
        if self.lr_schedule not in ("constant", "cosine", "inv", "warmup_cosine") and inv_gamma(self.lr_schedule) is None:
            raise ConfigError(
                f"unknown lr_schedule {self.lr_schedule!r}; valid: constant, cosine, inv, inv:<gamma> (gamma > 0, e.g. inv:0.001), warmup_cosine"
            )
        bad = {k: v for k, v in self.lr_multipliers.items()
               if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0}
        if bad:
            raise ConfigError(f"lr_multipliers {bad!r}: keys must be regexes, values numbers >= 0")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"unknown compute_dtype {self.compute_dtype!r}; valid: float32, bfloat16")
        for key in ("source", "target"):
            names = [n.strip() for n in getattr(self, key).split(",")]
            if not all(names) or len(set(names)) != len(names):
                raise ConfigError(
                    f"config key {key!r} = {getattr(self, key)!r} must be a domain name or distinct names joined "
                    "by commas, e.g. 'usps,mnistm32' (see `da list`)"
                )
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("checkpoint_every > 0 needs checkpoint_dir (a folder for this run's checkpoints)")

    @property
    def source_names(self) -> tuple[str, ...]:
        """The labelled source domains, in order (one for a two-domain run)."""
        return tuple(n.strip() for n in self.source.split(","))

    @property
    def target_names(self) -> tuple[str, ...]:
        """The unlabelled target domains, in order."""
        return tuple(n.strip() for n in self.target.split(","))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **overrides: Any) -> ExperimentConfig:
        """Returns a copy with ``overrides`` applied (unknown keys raise ConfigError).

        A dotted key sets one entry of a dict-valued key and keeps the others:
        ``replace(**{"model_kwargs.pretrained": "/w.pth"})``.
        """
        values = self.to_dict()
        for key, value in overrides.items():
            head, dot, entry = key.partition(".")
            if dot:
                _check_dotted(key)
                values[head] = {**values[head], entry: value}
            else:
                values[key] = value
        return from_dict(values)


def inv_gamma(lr_schedule: str) -> float | None:
    """The gamma of an ``"inv:<gamma>"`` schedule (a finite number > 0), else None."""
    name, _, value = lr_schedule.partition(":")
    if name != "inv" or not value:
        return None
    try:
        gamma = float(value)
    except ValueError:
        return None
    return gamma if math.isfinite(gamma) and gamma > 0 else None


_KINDS = {"int": "an int", "float": "a finite number", "str": "a string", "bool": "True or False", "Mapping[str, Any]": "a dict"}


def _check_type(key: str, annotation: str, value: Any) -> Any:
    """``value`` checked against a field's annotation (``int``, ``float``, ``str``, a mapping,
    each maybe ``| None``) and normalised (an integral number to int, a real one to float).

    bool is no int here (``batch_size=True`` is an error), and an int field takes no float
    (not even 5.0); a float field takes an int or float but not nan/inf.
    """
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if value is None and optional:
        return None
    if base == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if base == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if base == "str" and isinstance(value, str):
        return value
    if base == "bool" and isinstance(value, bool):
        return bool(value)
    if base == "Mapping[str, Any]" and isinstance(value, Mapping):
        return value
    if base not in _KINDS:
        raise TypeError(f"config field {key!r} has annotation {annotation!r}, which _check_type does not know")
    kind = _KINDS[base] + (" or None" if optional else "")
    raise ConfigError(f"config key {key!r} must be {kind}, got {value!r} ({type(value).__name__})")


def config_keys() -> list[str]:
    """The valid config keys."""
    return [f.name for f in dataclasses.fields(ExperimentConfig)]


def from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Builds a config from a dict, rejecting unknown keys with the list of valid ones."""
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(config_keys())}")
    try:
        return ExperimentConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def _check_dotted(key: str) -> None:
    """``<dict key>.<entry>`` names one entry of a dict-valued config key, else ConfigError."""
    head, _, entry = key.partition(".")
    dicts = [f.name for f in dataclasses.fields(ExperimentConfig) if str(f.type).startswith("Mapping")]
    if head not in dicts or not entry:
        raise ConfigError(f"dotted override {key!r} must be <dict key>.<entry>; dict keys: {', '.join(dicts)}")


def parse_override(text: str) -> tuple[str, Any]:
    """Parses ``key=value`` (value as a Python/JSON literal, else a string); ``key`` may be
    dotted (``model_kwargs.pretrained=/w.pth``) to set one entry of a dict-valued key."""
    import ast

    if "=" not in text:
        raise ConfigError(f"override {text!r} must be written key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    if "." in key:
        _check_dotted(key)
    elif key not in config_keys():
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(config_keys())}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw
