"""The persistent compilation cache: where it lives, that it is used, and that it changes no result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jaxlib
import pytest

from da_framework.compile_cache import CACHE_VARIABLE, cache_directory

# One short run; prints its logged history as JSON (float64 text of every float32 value).
SCRIPT = """
import json, sys
from da_framework.compile_cache import enable_compile_cache
print("CACHE", enable_compile_cache())
from da_framework.config import ExperimentConfig
from da_framework.train import train
r = train(ExperimentConfig(method="dann", steps=6, log_every=2, seed=int(sys.argv[1])))
print("HISTORY", json.dumps(r.history))
"""


def _run(seed: int, cache: str, tmp_path: Path) -> tuple[str, list[dict]]:
    env = {**os.environ, CACHE_VARIABLE: cache}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(seed)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("CACHE ", "HISTORY ")))
    return lines["CACHE"], json.loads(lines["HISTORY"])


def test_cache_directory_is_per_cpu_and_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path))
    d = cache_directory()
    assert d is not None and d.parent == tmp_path and d.name.endswith(f"-jax{jax.__version__}-jaxlib{jaxlib.__version__}")
    for off in ("off", "0", "OFF"):
        monkeypatch.setenv(CACHE_VARIABLE, off)
        assert cache_directory() is None
    monkeypatch.delenv(CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory().parent == tmp_path / "xdg" / "da_framework" / "jax"


def test_cached_executables_give_bitwise_the_same_history(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    where_off, plain = _run(1, "off", tmp_path)
    assert where_off == "None"
    where, first = _run(1, str(cache), tmp_path)  # compiles and fills the cache

    def steps() -> set[str]:
        # The train step's entries.  Small programs are cached only when their compile took
        # over MIN_COMPILE_SECONDS, which depends on the machine's load: not compared.
        return {p.name for p in Path(where).iterdir() if p.name.startswith("jit_counted_step") and p.name.endswith("-cache")}

    entries = steps()
    assert len(entries) == 1, sorted(p.name for p in Path(where).iterdir())
    written = (Path(where) / next(iter(entries))).stat().st_mtime_ns
    _, second = _run(1, str(cache), tmp_path)  # loads the step from the cache
    assert steps() == entries  # the same key: the same program
    assert (Path(where) / next(iter(entries))).stat().st_mtime_ns == written  # read, not written again
    assert plain == first == second
    _, other_seed = _run(2, str(cache), tmp_path)  # same programs, other inputs: still a cache hit, other numbers
    assert steps() == entries and other_seed != plain
