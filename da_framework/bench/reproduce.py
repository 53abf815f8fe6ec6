"""Reproduction: rerun a recorded run from its config and compare the metrics."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from da_framework.config import ExperimentConfig, from_dict


def config_of_record(record: Mapping[str, Any]) -> ExperimentConfig:
    """The config that reruns a record from scratch (checkpointing off, so nothing is resumed)."""
    return from_dict(record["config"]).replace(checkpoint_every=0, checkpoint_dir=None)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out[prefix] = value


def natural_key(key: str) -> list[Any]:
    """Sort key that orders the digit runs of ``key`` as numbers (``history[2]`` < ``history[10]``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def compare_metrics(recorded: Mapping[str, Any], new: Mapping[str, Any], atol: float = 0.0) -> list[str]:
    """Differences between two (nested) metric dicts; empty when they match.

    Numbers match when ``|a - b| <= atol`` (``atol=0``: exactly); NaN matches NaN.
    Returns one human-readable line per differing or missing entry, in natural order
    (``history[2]`` before ``history[10]``), so the first line is the first step that differs.
    """
    a, b = {}, {}
    _flatten("", recorded, a)
    _flatten("", new, b)
    out = []
    for key in sorted(set(a) | set(b), key=natural_key):
        if key not in a or key not in b:
            out.append(f"{key}: only in {'recorded' if key in a else 'rerun'}")
            continue
        x, y = a[key], b[key]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if (math.isnan(x) and math.isnan(y)) or abs(x - y) <= atol:
                continue
            out.append(f"{key}: recorded {x!r}, rerun {y!r} (diff {y - x:+.3g})")
        elif x != y:
            out.append(f"{key}: recorded {x!r}, rerun {y!r}")
    return out
