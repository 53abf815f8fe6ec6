"""Random hyper-parameter search for sweeps, DomainBed style, seeded and printable.

A sweep's ``"search"`` key replaces (or extends) the grid with random samples::

    "search": {
        "samples": 20,            # per method and trial seed; sample 0 is the defaults
        "seed": 0,                # the sweep's search seed
        "per_trial": True,        # a new draw per trial seed (DomainBed); False: one per sample
        "spaces": {               # method (as in "methods") -> grid key -> distribution
            "cross_entropy + irm": {"learning_rate": "log10_uniform(-4.5, -2.5)",
                                    "irm.irm_lambda": "log10_uniform(-1, 5)"},
        },
    }

Grid keys are those of a sweep grid (config keys, ``<term>.<hparam>``, ``weight:<term>``).
Distributions are small expressions, parsed with :mod:`ast` (never ``eval``):

=============================  ======================================================
``log10_uniform(a, b)``        ``10 ** U(a, b)`` (DomainBed's ``10**r.uniform(a, b)``)
``uniform(a, b)``              ``U(a, b)``
``int_log10_uniform(a, b)``    ``int(10 ** U(a, b))`` (anneal iterations)
``int_uniform(a, b)``          ``int(U(a, b))`` (MLP depths)
``int_pow2_uniform(a, b)``     ``int(2 ** U(a, b))`` (batch sizes)
``choice([v1, v2, ...])``      one of the values, uniformly
=============================  ======================================================

As in DomainBed (``hparams_registry.random_hparams`` with ``seed_hash(hparams_seed,
trial_seed)``), sample ``i`` of trial seed ``s`` draws from its own generator,
``numpy.random.default_rng([search seed, i, s, crc32(method)])``, keys in sorted order, so a
sample never depends on which other samples or methods the sweep has, and sample 0 is the
method's defaults (no overrides), as DomainBed's ``hparams_seed=0``.  With ``"per_trial": False``
the trials of a sample share its values (the trial seed is left out of the generator), so they
differ only in seed and ``da bench --vmap-seeds`` trains them as one program.  ``da bench SWEEP --plan``
prints every run's values before anything trains (DomainBed's sampling is opaque to its
users: facebookresearch/DomainBed issue #103).
"""

from __future__ import annotations

import ast
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from da_framework.config import ConfigError

SEARCH_KEYS = ("samples", "seed", "spaces", "per_trial")


def _log10_uniform(r: np.random.Generator, a: float, b: float) -> float:
    return float(10 ** r.uniform(a, b))


def _uniform(r: np.random.Generator, a: float, b: float) -> float:
    return float(r.uniform(a, b))


def _int_log10_uniform(r: np.random.Generator, a: float, b: float) -> int:
    return int(10 ** r.uniform(a, b))


def _int_uniform(r: np.random.Generator, a: float, b: float) -> int:
    return int(r.uniform(a, b))


def _int_pow2_uniform(r: np.random.Generator, a: float, b: float) -> int:
    return int(2 ** r.uniform(a, b))


def _choice(r: np.random.Generator, values: list[Any]) -> Any:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"choice(...) takes a non-empty list of values, got {values!r}")
    return values[int(r.integers(len(values)))]


DISTRIBUTIONS: dict[str, Callable[..., Any]] = {
    "log10_uniform": _log10_uniform,
    "uniform": _uniform,
    "int_log10_uniform": _int_log10_uniform,
    "int_uniform": _int_uniform,
    "int_pow2_uniform": _int_pow2_uniform,
    "choice": _choice,
}


def parse_distribution(text: str) -> tuple[str, tuple[Any, ...]]:
    """``"log10_uniform(-1, 5)"`` -> ``("log10_uniform", (-1, 5))``; ConfigError naming the problem."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"search distribution {text!r} is not an expression like 'log10_uniform(-1, 5)': {e.msg}") from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.keywords:
        raise ConfigError(f"search distribution {text!r} must be a call like 'log10_uniform(-1, 5)' (positional arguments)")
    name = node.func.id
    if name not in DISTRIBUTIONS:
        raise ConfigError(f"unknown search distribution {name!r} in {text!r}; valid: {', '.join(DISTRIBUTIONS)}")
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
    except ValueError:
        raise ConfigError(f"search distribution {text!r}: arguments must be literals") from None
    expected = 1 if name == "choice" else 2
    if len(args) != expected:
        raise ConfigError(f"search distribution {name} takes {expected} argument(s), got {len(args)} in {text!r}")
    if name == "choice" and (not isinstance(args[0], list) or not args[0]):
        raise ConfigError(f"search distribution {text!r}: choice(...) takes a non-empty list of values")
    if name != "choice" and not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"search distribution {text!r}: bounds must be numbers")
    if name != "choice" and args[0] > args[1]:
        raise ConfigError(f"search distribution {text!r}: lower bound above upper bound")
    return name, args


def validate_search(search: Mapping[str, Any], methods: list[str]) -> dict[str, Any]:
    """Checks a sweep's ``"search"`` dict (keys, sample count, methods, distributions); returns it with defaults."""
    unknown = sorted(set(search) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"unknown search key(s) {', '.join(unknown)}; valid: {', '.join(SEARCH_KEYS)}")
    out = {"seed": 0, "spaces": {}, "per_trial": True, **search}
    if not isinstance(out["per_trial"], bool):
        raise ConfigError(f"search 'per_trial' must be True or False, got {out['per_trial']!r}")
    n = out.get("samples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"search 'samples' must be an integer >= 1 (sample 0 is the defaults), got {n!r}")
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], int):
        raise ConfigError(f"search 'seed' must be an integer, got {out['seed']!r}")
    for method, space in out["spaces"].items():
        if method not in methods:
            raise ConfigError(f"search space for {method!r}, which is not in the sweep's methods {methods}")
        if not isinstance(space, Mapping):
            raise ConfigError(f"search space of {method!r} must be a dict of grid key -> distribution")
        for key, dist in space.items():
            if not isinstance(dist, str):
                raise ConfigError(f"search space {method!r} key {key!r}: distribution must be a string like 'uniform(0, 1)'")
            parse_distribution(dist)
    return out


def sample_point(space: Mapping[str, str], search_seed: int, sample: int, trial_seed: int | None, method: str) -> dict[str, Any]:
    """Sample ``sample`` of ``space`` for ``method`` at ``trial_seed`` (``{}`` for sample 0: the defaults;
    ``trial_seed`` None: the draw every trial of the sample shares, ``"per_trial": False``)."""
    if sample == 0 or not space:
        return {}
    trial = [] if trial_seed is None else [trial_seed]
    rng = np.random.default_rng([search_seed, sample, *trial, zlib.crc32(method.encode())])
    out = {}
    for key in sorted(space):
        name, args = parse_distribution(space[key])
        out[key] = DISTRIBUTIONS[name](rng, *args)
    return out


def search_points(search: Mapping[str, Any], method: str, trial_seed: int) -> list[tuple[int, dict[str, Any]]]:
    """``[(sample index, values), ...]`` of one method and trial seed (a method without a space: sample 0 only)."""
    space = search["spaces"].get(method, {})
    n = search["samples"] if space else 1
    trial = trial_seed if search.get("per_trial", True) else None
    return [(i, sample_point(space, search["seed"], i, trial, method)) for i in range(n)]
