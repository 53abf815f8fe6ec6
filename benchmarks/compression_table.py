"""Compression of a transferred digits model: sparsity / bits vs accuracy vs size.

The dense model is a LeNet (conv 20, conv 50, dense 500): trained on ``digits/source``
(``--source-steps``), then fine-tuned on every labelled ``digits/rotate`` training image
(``--steps``).  Every row compresses that model and reports accuracy on the
``digits/rotate`` test split (179 images), the sparsity of the kernels, the bit width of the
kernels and the storage size (:func:`da_framework.transfer.size.storage_bytes`: float32
dense; pruned kernels as bitmap + non-zeros; quantised kernels packed + float32
per-channel scales; biases always float32):

* ``prune global s`` / ``prune layer s``: one-shot magnitude pruning, no retraining;
* ``prune global s + finetune``: then ``--steps`` fine-tuning steps with the masks kept
  (``keep_masks`` chained after Adam);
* ``gradual prune s``: Zhu & Gupta's cubic schedule during ``--steps`` fine-tuning steps
  from the dense model (pruning every 10 steps until about 75% of them);
* ``int8 PTQ`` / ``int4 PTQ``: post-training symmetric per-channel quantisation;
* ``int4 QAT``: ``--steps`` fine-tuning steps through 4-bit fake quantisation (STE), then PTQ;
* ``prune 0.9 + finetune + int8``: both;
* ``student (distilled)``: LeNet (6, 16, dense 64) distilled (T = 4, no labels) from the dense
  model on the target training images, against the same student trained on the labels.

Run:  nice -n 10 python benchmarks/compression_table.py --seeds 1 --out results/compression.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def rows_for_seed(seed: int, source_steps: int, steps: int) -> list[dict[str, Any]]:
    """Every compression row for one seed."""
    import jax
    import optax

    from da_framework.data.registry import get_domain
    from da_framework.models.registry import make_model
    from da_framework.transfer.finetune import accuracy, fit, split_arrays
    from da_framework.transfer.pruning import gradual_pruning, keep_masks, polynomial_sparsity, prune, sparsity
    from da_framework.transfer.quantization import dequantize_params, fake_quantize_params, quantize_params
    from da_framework.transfer.size import num_params, storage_bytes
    from da_framework.transfer.student import distill

    lr = 1e-3
    model = make_model("lenet", 10, None, channels=(20, 50), dense=500)
    xs, ys = split_arrays(get_domain("digits/source"), "train")
    x, y = split_arrays(get_domain("digits/rotate"), "train")
    xt, yt = split_arrays(get_domain("digits/rotate"), "test")
    key = jax.random.key(seed)
    variables = model.init(jax.random.fold_in(key, 0), xs[:2])
    variables = fit(model, variables, optax.adam(lr), xs, ys, source_steps, jax.random.fold_in(key, 1), batch_size=64)
    dense = fit(model, variables, optax.adam(lr), x, y, steps, jax.random.fold_in(key, 2), batch_size=64)
    rows: list[dict[str, Any]] = []

    def add(name: str, params: Any, bits: int = 32, sparse: bool = False, m: Any = model, float_params: Any = None) -> None:
        evaluated = params if float_params is None else float_params
        rows.append({
            "seed": seed, "model": name,
            "accuracy": round(accuracy(m, {"params": evaluated}, xt, yt), 4),
            "sparsity": round(sparsity(evaluated), 4), "bits": bits,
            "bytes": storage_bytes(evaluated, bits=None if bits == 32 else bits, sparse=sparse),
            "params": num_params(evaluated),
        })  # fmt: skip

    p0 = dense["params"]
    add("dense fp32", p0)
    for s in (0.5, 0.8, 0.9, 0.95):
        add(f"prune global {s}", prune(p0, s)[0], sparse=True)
    add("prune layer 0.9", prune(p0, 0.9, scope="layer")[0], sparse=True)
    pruned, masks = prune(p0, 0.9)
    tuned = fit(model, {"params": pruned}, optax.chain(optax.adam(lr), keep_masks(masks)), x, y, steps, jax.random.fold_in(key, 3), batch_size=64)["params"]
    add("prune global 0.9 + finetune", tuned, sparse=True)
    end = max(10, 10 * (int(0.75 * steps) // 10))  # a pruning step, so the final sparsity is reached exactly
    sched = polynomial_sparsity(0.9, 0, end, 10)
    gradual = fit(model, dense, optax.chain(optax.adam(lr), gradual_pruning(sched, 0, end, 10)), x, y, steps, jax.random.fold_in(key, 4), batch_size=64)["params"]
    add("gradual prune 0.9", gradual, sparse=True)
    for bits in (8, 4):
        add(f"int{bits} PTQ", p0, bits=bits, float_params=dequantize_params(quantize_params(p0, bits)))
    qat = fit(model, dense, optax.adam(lr), x, y, steps, jax.random.fold_in(key, 5), batch_size=64,
              param_transform=lambda p: fake_quantize_params(p, bits=4))["params"]  # fmt: skip
    add("int4 QAT", qat, bits=4, float_params=dequantize_params(quantize_params(qat, 4)))
    add("prune 0.9 + finetune + int8", tuned, bits=8, sparse=True, float_params=dequantize_params(quantize_params(tuned, 8)))
    student = make_model("lenet", 10, None, channels=(6, 16), dense=64)
    sv = student.init(jax.random.fold_in(key, 6), x[:2])
    distilled = distill(model, dense, student, sv, optax.adam(2e-3), x, 2 * steps, jax.random.fold_in(key, 7), temperature=4.0)
    add("student (distilled, no labels)", distilled["params"], m=student)
    scratch = fit(student, sv, optax.adam(2e-3), x, y, 2 * steps, jax.random.fold_in(key, 7), batch_size=64)
    add("student (trained on labels)", scratch["params"], m=student)
    return rows


def main() -> None:
    """Prints the table (mean over seeds) and optionally writes every row as JSON."""
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--source-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps of every retraining row")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    start = time.perf_counter()
    rows = [r for s in range(args.seeds) for r in rows_for_seed(s, args.source_steps, args.steps)]
    table = Table(title=f"compression of a transferred LeNet on digits/rotate ({args.seeds} seed(s))")
    for col in ("model", "accuracy", "std", "sparsity", "bits", "bytes", "vs dense", "params"):
        table.add_column(col)
    names = list(dict.fromkeys(r["model"] for r in rows))
    dense_bytes = np.mean([r["bytes"] for r in rows if r["model"] == "dense fp32"])
    summary = []
    for name in names:
        rs = [r for r in rows if r["model"] == name]
        acc = np.mean([r["accuracy"] for r in rs])
        b = np.mean([r["bytes"] for r in rs])
        summary.append({"model": name, "accuracy": round(float(acc), 4), "std": round(float(np.std([r["accuracy"] for r in rs])), 4),
                        "sparsity": rs[0]["sparsity"], "bits": rs[0]["bits"], "bytes": int(b), "params": rs[0]["params"]})  # fmt: skip
        table.add_row(name, f"{acc:.4f}", f"{summary[-1]['std']:.4f}", f"{rs[0]['sparsity']:.3f}", str(rs[0]["bits"]),
                      f"{int(b):,}", f"{b / dense_bytes:.3f}", f"{rs[0]['params']:,}")  # fmt: skip
    Console(width=150).print(table)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
