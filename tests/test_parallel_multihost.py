"""Multi-host data parallelism: two processes (jax.distributed, 2 CPU devices each) run the
same code as one host; the sharded step equals the one-device step on the global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_device_and_train():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "XLA_FLAGS": ""}
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(port), str(i)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    results = []
    for p, out in zip(procs, outs):
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert p.returncode == 0 and lines, out[-3000:]
        results.append(json.loads(lines[-1][len("RESULT "):]))
    for r in results:
        assert r["devices"] == 4
        assert r["loss_err"] < 1e-5, r
        assert r["grad_rel_err"] < 1e-6, r
        assert r["compile_count"] == 1
    # both processes see the same global metrics
    assert results[0]["train_losses"] == results[1]["train_losses"]
    assert results[0]["target_acc"] == results[1]["target_acc"]
