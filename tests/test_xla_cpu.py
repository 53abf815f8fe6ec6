"""da_framework/xla_cpu.py: default XLA:CPU flags, their opt-outs, records and da reproduce."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from da_framework import xla_cpu
from da_framework.xla_cpu import FAST_CPU_FLAGS, XlaFlagsError, cpu_defaults, use_xla_flags


def _flags_after_import(**env: str) -> str:
    """$XLA_FLAGS in a fresh process after ``import da_framework``."""
    full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT_VARIABLE)}
    full.update(env)
    code = "import os, da_framework; print(os.environ.get('XLA_FLAGS', '<unset>'))"
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not importlib.metadata.version("jaxlib").startswith(xla_cpu.TESTED_JAXLIB), reason="untested jaxlib: no defaults")
def test_import_appends_the_defaults_and_keeps_the_users_flags():
    assert _flags_after_import() == " ".join(FAST_CPU_FLAGS)
    assert _flags_after_import(XLA_FLAGS="--xla_cpu_enable_fast_math=false") == " ".join(("--xla_cpu_enable_fast_math=false", *FAST_CPU_FLAGS))
    # a flag the user set by name is left as the user set it
    name = FAST_CPU_FLAGS[0].split("=")[0]
    assert _flags_after_import(XLA_FLAGS=f"{name}=individual_dot") == f"{name}=individual_dot"
    assert _flags_after_import(DA_XLA_CPU_DEFAULTS="0") == "<unset>"


def test_untested_jaxlib_gets_no_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0.0")
    assert cpu_defaults() == ()


def test_use_xla_flags_after_the_backend_started_fails_with_the_fix(monkeypatch):
    import jax

    jax.numpy.ones(1).block_until_ready()  # the backend has started
    monkeypatch.setenv("XLA_FLAGS", "--a=1")
    assert use_xla_flags(" --a=1 ") is False  # same flags: nothing to do
    with pytest.raises(XlaFlagsError, match="start a new process with XLA_FLAGS='--b=2'"):
        use_xla_flags("--b=2")


def test_records_keep_the_flags(monkeypatch):
    from da_framework.results import platform_info

    monkeypatch.setenv("XLA_FLAGS", " --x=1  --y=2 ")
    assert platform_info()["xla_flags"] == "--x=1 --y=2"


@pytest.mark.slow
def test_reproduce_reruns_an_old_record_without_the_defaults(tmp_path):
    """A record without platform.xla_flags (made before the defaults) reruns with no flags, from
    a process that has the defaults on, and MATCHes."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(DA_XLA_CPU_DEFAULTS="0")
    out = tmp_path / "runs"
    run = [sys.executable, "-m", "da_framework.cli", "run", "digits_scale", "--method", "source_only",
           "--set", "steps=20", "--set", "eval_every=10", "--results-dir", str(out)]
    subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    (path,) = out.rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["platform"]["xla_flags"] == ""
    del record["platform"]["xla_flags"]
    path.write_text(json.dumps(record))
    env.pop("DA_XLA_CPU_DEFAULTS")  # the rerunning process has the defaults on
    r = subprocess.run([sys.executable, "-m", "da_framework.cli", "reproduce", str(path)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MATCH" in r.stdout and "recorded XLA_FLAGS=''" in r.stdout
