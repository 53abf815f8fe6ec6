"""Sweeps: methods x domain pairs x seeds x hyper-parameter grid, expanded into independent runs.

A sweep file (``experiments/sweeps/<name>.py`` or any path) defines ``get_sweep() -> dict``::

    def get_sweep():
        return {
            "name": "digits",                                   # results go to <results>/digits/
            "base": {"steps": 500, "model_kwargs": {...}},      # ExperimentConfig overrides
            "methods": ["source_only", "dann", "dan"],
            "pairs": [("digits/source", "digits/rotate"), ...],   # (sources, targets): a name,
                                                                 # or several in a list / "a,b"
            "seeds": [0, 1, 2],
            "grid": {"learning_rate": [1e-3, 3e-4]},            # optional; cartesian product
            "method_settings": {"mdd": {"learning_rate": 0.004}},  # optional; config overrides
                                                                 # of one method (over base)
            # loss weights and loss hyper-parameters are grid keys too: "weight:<key>" sets
            # the weight of the term keyed <key> (its loss name, or its "as <key>"),
            # "<key>.<name>" its hyper-parameter, in every method that has such a term
            # (methods without it run once per remaining grid point)
            "checkpoint_every": 100,                             # optional; in-run resume
            "search": {"samples": 20, "seed": 0, "spaces": {...}},  # optional; random search
        }                                                        # (da_framework.bench.search)

Every run is written as its own record (``da_framework.results`` format plus the
``"selection"`` scores of :mod:`da_framework.bench.selection`, an ``"analysis"`` dict and a
small ``.features.npz`` for embedding plots) at a path that names it, atomically.  Running a
sweep again skips every run whose record exists, so a killed sweep restarted loses nothing;
with ``checkpoint_every`` the interrupted run itself resumes from its last checkpoint.

A record is reused only if its config hash is the run's (:func:`check_done` refuses to mix
old and new results after an edit, and says how to proceed).  Several
``da bench`` processes may share one results folder: each run is claimed
(:func:`da_framework.results.claim`) before it starts, so none runs twice.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from da_framework.config import ConfigError, ExperimentConfig, config_keys, from_dict
from da_framework.experiment_files import call_in_file, experiments_dir, import_python_file
from da_framework.results import DIVERGED_FORMAT as DIVERGED_FORMAT  # re-exported
from da_framework.results import check_record, make_diverged_record, make_record, read_record, slug, write_json_atomic

SWEEP_KEYS = ("name", "base", "methods", "method_settings", "pairs", "seeds", "grid", "checkpoint_every", "search")
WEIGHT_PREFIX = "weight:"  # grid key "weight:<key>": the weight of the term keyed <key> (by default its loss name)


def _method_key(key: str) -> tuple[str, str] | None:
    """``("weight", key)`` for ``weight:<key>``, ``(name, key)`` for ``<key>.<name>``, else None.

    ``key`` is a term's key: its loss name, or the ``as <key>`` of a loss used twice.
    """
    if key.startswith(WEIGHT_PREFIX):
        return "weight", key[len(WEIGHT_PREFIX):]
    if "." in key:
        loss, name = key.split(".", 1)
        return name, loss
    return None
FEATURES_PER_DOMAIN = 300  # examples per domain kept for embedding plots


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its config, where its record goes, and its grid point.

    Attributes:
      config: the full run config.
      path: the record's JSON path.
      hparams: the grid values of this run (empty without a grid).
      sweep_method: the method as the sweep file names it (``config.method`` is the
        resolved spec, e.g. ``"cross_entropy + 100.0*coral"`` for ``"coral"`` at
        ``weight:coral=100``); reports group grid points by it.
    """

    config: ExperimentConfig
    path: Path
    hparams: Mapping[str, Any]
    sweep_method: str | None = None


def sweep_path(name_or_path: str) -> Path:
    """Resolves ``experiments/sweeps/<name>.py`` or a path to an existing sweep file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = experiments_dir() / "sweeps" / f"{name_or_path}.py"
    if not path.is_file():
        known = sorted(p.stem for p in (experiments_dir() / "sweeps").glob("*.py")) if (experiments_dir() / "sweeps").is_dir() else []
        raise ConfigError(f"unknown sweep {name_or_path!r}; valid sweeps: {', '.join(known) or 'none found'} (or pass a path)")
    return path


def load_sweep(name_or_path: str) -> dict[str, Any]:
    """Imports a sweep file and returns its validated ``get_sweep()`` dict (name defaults to the file stem)."""
    path = sweep_path(name_or_path)
    module = import_python_file(path, f"da_sweep_{path.stem}", kind="sweep")
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"sweep file {path} must define get_sweep() -> dict")
    sweep = call_in_file(path, module.get_sweep, kind="sweep")
    if not isinstance(sweep, Mapping):
        raise ConfigError(f"get_sweep() of sweep file {path} must return a dict, got {type(sweep).__name__}")
    sweep = dict(sweep)
    sweep.setdefault("name", path.stem)
    return validate_sweep(sweep)


def validate_sweep(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a sweep dict's keys and fills defaults; raises ConfigError naming the problem."""
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key(s) {', '.join(unknown)}; valid keys: {', '.join(SWEEP_KEYS)}")
    out = {"base": {}, "grid": {}, "method_settings": {}, "checkpoint_every": 0, **sweep}
    for key in ("methods", "pairs", "seeds"):
        if not out.get(key):
            raise ConfigError(f"sweep {out.get('name')!r} needs a non-empty {key!r} list")
    out["pairs"] = [_pair(pair) for pair in out["pairs"]]
    for key in out["grid"]:
        if _method_key(key):
            _check_method_key(key, out["grid"][key], out["methods"])
    for key in list(out["base"]) + [k for k in out["grid"] if not _method_key(k)]:
        if key not in config_keys():
            raise ConfigError(f"unknown config key {key!r} in sweep; valid keys: {', '.join(config_keys())}")
    clash = {"method", "source", "target", "seed", "name"} & (set(out["base"]) | set(out["grid"]))
    if clash:
        raise ConfigError(f"sweep base/grid must not set {', '.join(sorted(clash))}; use methods/pairs/seeds/name")
    for method, settings in out["method_settings"].items():
        if method not in out["methods"]:
            raise ConfigError(f"method_settings names {method!r}, which is not in the sweep's methods {out['methods']}")
        bad = sorted(set(settings) - set(config_keys())) or sorted({"method", "source", "target", "seed", "name"} & set(settings))
        if bad:
            raise ConfigError(f"method_settings[{method!r}] may not set {', '.join(bad)}; it takes config keys other than method/source/target/seed/name")
        if set(settings) & set(out["grid"]):
            raise ConfigError(f"method_settings[{method!r}] sets {', '.join(sorted(set(settings) & set(out['grid'])))}, which the grid sweeps; set it in one place")
    if "search" in out:
        _check_search(out)
    return out


def _check_search(sweep: dict[str, Any]) -> None:
    """Validates ``sweep["search"]`` in place: keys are grid keys of their method that nothing else sets."""
    from da_framework.bench.search import validate_search

    sweep["search"] = validate_search(sweep["search"], sweep["methods"])
    for method, key in ((m, k) for m, space in sweep["search"]["spaces"].items() for k in space):
        if key in sweep["grid"] or key in sweep["method_settings"].get(method, {}):
            raise ConfigError(f"search space of {method!r} samples {key!r}, which the grid or method_settings also sets; set it in one place")
        if _method_key(key):
            _check_method_key(key, [], [method])
        elif key not in config_keys() or key in {"method", "source", "target", "seed", "name"}:
            raise ConfigError(f"search space of {method!r}: {key!r} is no sweepable config key; valid keys: {', '.join(config_keys())}")


def _pair(pair: Any) -> tuple[str, str]:
    """A sweep pair ``(sources, targets)`` as two comma-joined name strings (each side one
    domain name, several names in a list/tuple, or ``"a,b"``), as :class:`ExperimentConfig` stores them."""
    if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ConfigError(f"sweep pair {pair!r} must be (source, target); each side a domain name or a list of names")
    sides = []
    for side in pair:
        names = [side] if isinstance(side, str) else list(side) if isinstance(side, Sequence) else None
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError(f"sweep pair {pair!r}: each side must be a domain name or a non-empty list of names")
        sides.append(",".join(n.strip() for part in names for n in part.split(",")))
    return sides[0], sides[1]


def _check_method_key(key: str, values: Sequence[Any], methods: Sequence[str]) -> None:
    """A ``weight:<key>`` or ``<key>.<name>`` grid key must name a term of at least one method
    (and, for ``<key>.<name>``, one of its loss's hyper-parameters); weights must be numbers."""
    from da_framework.losses.registry import get_loss
    from da_framework.train.method import parse_method

    name, term_key = _method_key(key)  # type: ignore[misc]
    having = [t.loss for m in methods for t in parse_method(m).terms if t.key == term_key]
    if not having:
        keys = sorted({t.key for m in methods for t in parse_method(m).terms})
        raise ConfigError(
            f"sweep grid key {key!r}: no method of the sweep has a term keyed {term_key!r}; "
            f"term keys in its methods: {', '.join(keys)}"
        )
    loss = having[0]
    if name == "weight":
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ConfigError(f"sweep grid key {key!r} must list numbers (loss weights); got {bad!r}")
    elif name not in get_loss(loss).hparams:
        valid = ", ".join(get_loss(loss).hparams) or "none"
        raise ConfigError(f"sweep grid key {key!r}: loss {loss!r} has no hyper-parameter {name!r}; valid: {valid}")


def method_at(method: str, hparams: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``method`` with the loss weights and loss hyper-parameters of a grid point applied.

    Returns the resolved method spec and the grid values that apply to this method: the
    ``weight:<key>`` and ``<key>.<name>`` keys of terms the method does not have are
    dropped (so a baseline such as ``source_only`` runs once per remaining grid point).
    """
    from da_framework.train.method import parse_method

    keyed = {k: _method_key(k) for k in hparams}
    if not any(keyed.values()):
        return method, dict(hparams)
    parsed = parse_method(method)
    own = {t.key for t in parsed.terms}
    applied = {k: v for k, v in hparams.items() if keyed[k] is None or keyed[k][1] in own}
    if all(keyed[k] is None for k in applied):  # none of the loss keys is this method's
        return method, applied
    terms = []
    for t in parsed.terms:
        mine = {keyed[k][0]: v for k, v in applied.items() if keyed[k] is not None and keyed[k][1] == t.key}
        weight = float(mine.pop("weight", t.weight))
        terms.append(dataclasses.replace(t, weight=weight, hparams=tuple({**dict(t.hparams), **mine}.items())))
    return dataclasses.replace(parsed, terms=tuple(terms)).spec(), applied


def _hp_slug(hparams: Mapping[str, Any]) -> str:
    return slug(",".join(f"{k}={v}" for k, v in hparams.items())) if hparams else "default"


def expand_sweep(sweep: Mapping[str, Any], results_dir: Path) -> list[RunSpec]:
    """All runs of a sweep, in a fixed order (pair, method, grid point, seed, search sample).

    Records go to ``<results>/<name>/<source>__<target>/<method>/<grid point>/seed<s>.json``
    (with a ``"search"``, ``<grid point>`` is ``sample<i>`` or ``sample<i>_<grid point>`` and the
    record's ``hparams`` hold the sampled values); checkpoints (if ``checkpoint_every``) go to
    ``<results>/<name>/.checkpoints/...``.
    """
    from da_framework.bench.search import search_points
    from da_framework.train.method import parse_method

    sweep = validate_sweep(sweep)
    root = results_dir / slug(sweep["name"])
    grid = sweep["grid"]
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    runs, seen = [], set()
    for (src, tgt), method in itertools.product(sweep["pairs"], sweep["methods"]):
        parse_method(method)  # fail fast on a bad method, before any training
        for point, seed, sample in ((p, s, i) for p in points for s in sweep["seeds"]
                                    for i in (search_points(sweep["search"], method, s) if "search" in sweep else [None])):
            spec, hp = method_at(method, {**point, **(sample[1] if sample else {})})
            folder = _hp_slug(hp) if sample is None else f"sample{sample[0]}" + (f"_{_hp_slug(method_at(method, point)[1])}" if point else "")
            rel = Path(f"{slug(src)}__{slug(tgt)}") / slug(method) / folder / f"seed{seed}"
            if rel in seen:  # a weight this method does not have: already listed
                continue
            seen.add(rel)
            config_hp = {k: v for k, v in hp.items() if not _method_key(k)}
            values = {**sweep["base"], **sweep["method_settings"].get(method, {}), **config_hp,
                      "name": sweep["name"], "source": src, "target": tgt, "method": spec, "seed": seed}
            if sweep["checkpoint_every"]:
                values.update(checkpoint_every=sweep["checkpoint_every"], checkpoint_dir=str(root / ".checkpoints" / rel))
            runs.append(RunSpec(from_dict(values), root / rel.with_suffix(".json"), hp, method))
    return runs


def evaluate_for_selection(config: ExperimentConfig, state: Any) -> tuple[dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """Selection scores, analysis numbers and plot features of a trained state.

    Returns:
      ``(selection, analysis, features)``: validator scores (:func:`selection.selection_scores`),
      ``{"proxy_a_distance": ...}`` on source-test vs target-test features with the number of target
      examples the validators read (at most ``VALIDATOR_TARGET_EXAMPLES``, a seeded subsample), and a
      subsample of those features with labels for embedding plots.  With several sources
      (targets), their splits are pooled; the two accuracies are the mean over domains.
    """
    from da_framework.bench.analysis import proxy_a_distance
    from da_framework.bench.selection import VALIDATOR_TARGET_EXAMPLES, selection_scores
    from da_framework.data.registry import get_domain
    from da_framework.models.registry import build_kwargs, make_model
    from da_framework.train.evaluate import make_predict_fn, predict_split

    sources = [get_domain(n, config.data_dir) for n in config.source_names]
    targets = [get_domain(n, config.data_dir) for n in config.target_names]
    model = make_model(config.model, sources[0].num_classes, config.bottleneck_dim, config.bottleneck_norm, **build_kwargs(config.model_kwargs))
    predict = make_predict_fn(model)
    variables = jax.device_get({"params": state.params["model"], **state.model_state})

    def run(domains: list[Any], split: str) -> tuple[dict[str, np.ndarray], list[float]]:
        """Predictions on ``split`` of every domain, pooled, and each domain's accuracy."""
        parts = [predict_split(predict, variables, d.split(split), config.eval_batch_size, d.input_key) for d in domains]
        pooled = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return pooled, [float(np.mean(np.argmax(p["logits"], -1) == p["label"])) for p in parts]

    (s_val, s_val_acc), (t_train, _), (s_test, _), (t_test, t_test_acc) = (
        run(sources, "val"), run(targets, "train"), run(sources, "test"), run(targets, "test"))
    selection = selection_scores(s_val, t_train, t_test, seed=config.seed)
    if len(sources) > 1:  # the mean over domains, as the headline metrics and DomainBed's training-domain validation
        selection["source_val_accuracy"] = float(np.mean(s_val_acc))
    if len(targets) > 1:
        selection["target_oracle_accuracy"] = float(np.mean(t_test_acc))
    analysis = {"proxy_a_distance": proxy_a_distance(s_test["features"], t_test["features"], seed=config.seed),
                "validator_target_examples": min(len(t_train["logits"]), VALIDATOR_TARGET_EXAMPLES)}
    i_s, i_t = (np.sort(np.random.default_rng(k).permutation(n)[:FEATURES_PER_DOMAIN]) for k, n in enumerate((len(s_test["label"]), len(t_test["label"]))))
    features = {
        "source_features": s_test["features"][i_s].astype(np.float32), "source_label": s_test["label"][i_s],
        "target_features": t_test["features"][i_t].astype(np.float32), "target_label": t_test["label"][i_t],
    }
    return selection, analysis, features


def features_path(record_path: Path) -> Path:
    """Where a run's embedding features go (next to its record)."""
    return record_path.with_suffix(".features.npz")


def write_run(run: RunSpec, result: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Scores a finished run, writes its features then its record (atomically, last)."""
    selection, analysis, features = evaluate_for_selection(run.config, result.state)
    record = make_record(result.config, result.metrics, result.history, result.wall_time_s)
    record.update(selection=selection, analysis=analysis, hparams=dict(run.hparams), features_file=features_path(run.path).name)
    if run.sweep_method is not None:
        record["sweep_method"] = run.sweep_method
    record.update(extra or {})
    run.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.path.with_suffix(".features.tmp.npz")
    np.savez_compressed(tmp, **features)
    tmp.replace(features_path(run.path))
    write_json_atomic(run.path, record)
    _drop_checkpoints(run)
    return record


def _drop_checkpoints(run: RunSpec) -> None:
    """Deletes a finished run's checkpoints (and the folders they leave empty)."""
    if run.config.checkpoint_dir:
        shutil.rmtree(run.config.checkpoint_dir, ignore_errors=True)
        try:
            os.removedirs(Path(run.config.checkpoint_dir).parent)
        except OSError:
            pass


def write_diverged(run: RunSpec, error: Exception, wall_time_s: float) -> dict[str, Any]:
    """Records a run whose loss became non-finite, in place of its result.

    A diverged grid point is a result of the sweep, not a crash: the record (the usual run
    record without metrics, in format :data:`DIVERGED_FORMAT`, with the error message) makes
    a resumed sweep skip the run (with the same config and seed it diverges again; delete the
    file to retry after a fix), and ``da report`` lists it instead of averaging it.
    """
    record = make_diverged_record(run.config, error, wall_time_s, hparams=dict(run.hparams))
    if run.sweep_method is not None:
        record["sweep_method"] = run.sweep_method
    write_json_atomic(run.path, record)
    _drop_checkpoints(run)
    return record


def run_one(run: RunSpec, on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Trains one run with :func:`train` and writes its record."""
    from da_framework.train.loop import train

    return write_run(run, train(run.config, on_log=on_log))


def run_or_record_divergence(run: RunSpec, on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """:func:`run_one`, except that a non-finite loss writes a diverged record (:func:`write_diverged`)."""
    from da_framework.train.loop import NonFiniteLossError

    start = time.perf_counter()
    try:
        return run_one(run, on_log=on_log)
    except NonFiniteLossError as e:
        return write_diverged(run, e, time.perf_counter() - start)


def run_seed_group(runs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """Trains runs that differ only in seed as one vmapped program and writes their records.

    The records' configs have checkpointing off (the vmapped program does not checkpoint)
    and carry ``"runner": "vmap_seeds"``; their metrics equal separate runs up to float
    reassociation, so ``da reproduce`` of them needs a tolerance.
    """
    from da_framework.bench.vmap_seeds import resolve_execution, train_seeds

    base = runs[0].config.replace(checkpoint_every=0, checkpoint_dir=None)
    for r in runs:
        if r.config.replace(checkpoint_every=0, checkpoint_dir=None, seed=base.seed) != base:
            raise ConfigError("run_seed_group needs runs that differ only in seed")
    results = train_seeds(base, [r.config.seed for r in runs])
    out = []
    for run, result in zip(runs, results):
        result.wall_time_s /= len(runs)
        plain = dataclasses.replace(run, config=result.config)
        out.append(write_run(plain, result, {"runner": f"vmap_seeds(k={len(runs)}, {resolve_execution('auto')})"}))
    return out


def seed_groups(runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped by everything but the seed (same pair, method, grid point and sampled values), in order."""
    groups: dict[tuple[Path, str], list[RunSpec]] = {}
    for r in runs:
        groups.setdefault((r.path.parent, repr(sorted(r.hparams.items()))), []).append(r)
    return list(groups.values())


def pending(runs: Sequence[RunSpec]) -> list[RunSpec]:
    """The runs whose record does not exist yet."""
    return [r for r in runs if not r.path.exists()]


def check_done(runs: Sequence[RunSpec]) -> None:
    """Checks that every existing record of the sweep was made by its run's config.

    Raises:
      RecordError: for an unreadable record or one made by another config (an edited sweep
        base or grid); the message names the file, the differing keys and what to do.
    """
    for r in runs:
        if r.path.exists():
            check_record(read_record(r.path), r.path, r.config)
