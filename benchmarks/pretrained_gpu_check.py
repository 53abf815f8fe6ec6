"""An imported torchvision ResNet-50 on a GPU: forward parity with torch there, and its DANN step's throughput.

Run by hand on a GPU (not part of the tests; CPU parity is ``tests/test_pretrained_import.py``):

    PYTHONPATH=$PWD python benchmarks/pretrained_gpu_check.py --out resnet50_imported_gpu.json

1. Builds torchvision's own ``resnet50()`` with random weights and random BatchNorm running
   statistics (no download: random weights exercise every tensor), saves its ``state_dict`` as
   ``.pth`` and imports it into the project's ``resnet50`` (the weight-transfer report says what
   loaded).
2. Eval-mode features of the same 224x224 batch on the GPU, torch vs Flax, as max relative
   error (max |flax - torch| / max |torch|): once with both sides in full float32 (torch's TF32
   off, JAX's matmul precision ``highest``), once at each framework's default precision (TF32
   convolutions on both), where the error says what TF32 costs, not whether the import is right.
3. The compiled DANN step (``benchmarks/step_throughput.py`` ``jax_runner``: synthetic batches
   on the device, state donated) started from the imported weights, in bfloat16 at 224x224, at
   the batch sizes given: examples/s and MFU, to set beside ``benchmarks/step_profile.py``'s
   random-initialisation numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from step_throughput import jax_runner, peak_flops

from da_framework.models import make_model
from da_framework.transfer.pretrained import load_pretrained


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def torchvision_resnet50(path: Path) -> object:
    """torchvision's resnet50() with random weights and running statistics, saved to ``path``."""
    import torch
    import torch_reference_models as ref

    try:
        import torchvision

        net, build = torchvision.models.resnet50(), f"torchvision {torchvision.__version__}"
    except ImportError:  # a CPU dry run where torchvision is absent: the same module names and arithmetic
        net, build = ref.resnet50(), "tests/torch_reference_models.py resnet50 (torchvision not installed)"
    print(f"torch model: {build}", flush=True)
    torch.manual_seed(0)
    net = ref.randomize_(net, seed=1).eval()
    torch.save(net.state_dict(), path)
    return net


def parity(net: object, path: Path, batch: int) -> dict[str, object]:
    """Eval-mode feature parity on the GPU, full float32 and default precision."""
    import torch

    model = make_model("resnet50", 31)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    variables, report = load_pretrained(path, zeros, "resnet50")
    x = np.random.default_rng(2).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tnet = net.to(dev)
    tnet.fc = torch.nn.Identity()
    out: dict[str, object] = {"report": report.summary(), "batch": batch, "torch_device": dev}
    for label, tf32, precision in (("float32", False, "highest"), ("default", True, "default")):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad():
            want = tnet(torch.from_numpy(x).to(dev)).double().cpu().numpy()
        with jax.default_matmul_precision(precision):
            got = jax.jit(lambda v, x: model.apply(v, x)[1])(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
        out[f"max_rel_err_{label}"] = rel_err(np.asarray(got), want)
        print(f"eval features, {label}: max relative error {out[f'max_rel_err_{label}']:.2e}", flush=True)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    return out


def throughput(path: Path, batches: list[int], steps: int, rounds: int) -> list[dict[str, object]]:
    """The DANN bf16 step from the imported weights: ex/s (median of rounds) and MFU."""
    peak = peak_flops("bfloat16")
    rows = []
    for batch in batches:
        runner = jax_runner("resnet50", "dann", "bfloat16", batch, load=str(path))
        times = [runner.run(steps) for _ in range(rounds)]
        ex_s = [2 * batch * steps / t for t in times]
        row = {"batch_per_domain": batch, "steps": steps, "rounds": rounds, "compile_s": runner.compile_s,
               "ex_per_s_median": statistics.median(ex_s), "ex_per_s_rounds": ex_s,
               "gflop_per_step": runner.flops_per_step / 1e9,
               "mfu": (runner.flops_per_step * statistics.median(ex_s) / (2 * batch) / peak) if peak else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    """Parses the flags, runs the parity check and the throughput rows, writes JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,128", help="per-domain batch sizes of the DANN step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parity-batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    env = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "jax": jax.__version__,
           "torch": torch.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50_torchvision_random.pth"
        net = torchvision_resnet50(path)
        result = {"env": env, "parity": parity(net, path, args.parity_batch)}
        del net
        result["dann_bf16"] = throughput(path, [int(b) for b in args.batches.split(",")], args.steps, args.rounds)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
