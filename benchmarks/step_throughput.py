"""Train-step throughput: da_framework (JAX) against the same model and loss in PyTorch eager.

Run by hand (not part of the tests); prints one table:

    PYTHONPATH=$PWD python benchmarks/step_throughput.py --models lenet
    PYTHONPATH=$PWD python benchmarks/step_throughput.py --models resnet50 --methods dann --batch 4 --steps 3

For every (model, method, dtype) the JAX train step (``da_framework.train.make_train_step``,
compiled once with ``jax.jit``, state donated) and a plain PyTorch eager version of the same
network, loss and optimiser, written the way Transfer-Learning-Library runs it (an
``nn.Module``, a gradient-reversal ``autograd.Function``, a domain discriminator, MK-MMD on
the bottleneck features, ``loss.backward(); optimizer.step()``), are timed in the same
process, alternating JAX and PyTorch rounds so that both see the same machine load.  The
table reports the median examples/s over rounds (source + target examples per second), the
JAX/PyTorch ratio, the JAX compile time (lower + compile), the step's model FLOPs (matrix
products and convolutions counted from its jaxpr, :mod:`da_framework.train.flops`) and, on
a GPU, the model FLOPs utilisation: achieved FLOP/s over the device's peak (:data:`PEAK_TFLOPS`).  Data are synthetic batches already on the device: this measures the
step, not the input pipeline.

PyTorch is not a dependency of da_framework: ``pip install 'da_framework[bench]'`` (or
``pip install torch``); without it, or with ``--no-torch``, only the JAX columns are filled.  The PyTorch side
runs on CUDA when ``torch.cuda.is_available()``, else on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from da_framework.config import ExperimentConfig
from da_framework.losses.mmd import DEFAULT_ALPHAS
from da_framework.losses.registry import LossError, get_loss
from da_framework.models import make_model
from da_framework.train import init_train_state, make_optimizer, make_train_step, parse_method
from da_framework.train.flops import model_flops

# Dense peak TFLOP/s by device kind (substring of ``jax.devices()[0].device_kind``):
# (bfloat16 tensor cores, float32 as JAX runs it on GPU by default = TF32 tensor cores).
# Vendor data sheets, dense (no sparsity).
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),  # SXM
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
    "A10": (125.0, 62.5),
}

MODELS: dict[str, dict[str, Any]] = {
    # the digits CNN (TLL / ADDA LeNet: conv20-conv50-dense500) on 28x28 grey images
    "lenet": dict(name="lenet", shape=(28, 28, 1), classes=10, batch=32, kwargs={}),
    # ResNet-50 on 224x224 RGB (Office-31 has 31 classes)
    "resnet50": dict(name="resnet50", shape=(224, 224, 3), classes=31, batch=32, kwargs={}),
    # ViT-Base/16 on 224x224 RGB: a matmul-bound backbone (JAX side only; no PyTorch twin here)
    "vit_b16": dict(name="vit_b16", shape=(224, 224, 3), classes=31, batch=32, kwargs={}),
}
TORCH_MODELS = ("lenet", "resnet50")  # the models torch_runner has a PyTorch version of
METHODS: dict[str, str] = {
    "source_only": "cross_entropy",
    "dann": "cross_entropy + 1.0*dann",
    "dan": "cross_entropy + 1.0*mmd",
    "cdan": "cross_entropy + 1.0*cdan",
}
BOTTLENECK = 256


@dataclass
class Runner:
    """One side of a comparison: ``run(n)`` takes n steps and returns the seconds taken."""

    run: Callable[[int], float]
    compile_s: float = float("nan")
    flops_per_step: float = float("nan")
    compiled: Any = None  # the JAX side's compiled executable (for cost analysis and profiling)


# --------------------------------------------------------------------------------- JAX


def jax_runner(model_name: str, method_name: str, dtype: str, batch: int, seed: int = 0) -> Runner:
    """The da_framework step of ``method_name`` on ``model_name``, compiled, with warm state."""
    spec = MODELS[model_name]
    model = make_model(spec["name"], spec["classes"], BOTTLENECK, **spec["kwargs"])
    method = parse_method(METHODS[method_name])
    tx = make_optimizer(ExperimentConfig(optimizer="sgd", learning_rate=0.01, weight_decay=1e-3, steps=10_000))
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(2):  # two distinct batches, alternated
        xs = jax.device_put(rng.random((batch, *spec["shape"]), dtype=np.float32))
        xt = jax.device_put(rng.random((batch, *spec["shape"]), dtype=np.float32))
        ys = jax.device_put(rng.integers(0, spec["classes"], batch).astype(np.int32))
        batches.append(({"image": xs, "label": ys}, {"image": xt}))
    (s0, t0) = batches[0]
    state = jax.jit(lambda k: init_train_state(k, model, method, tx, s0["image"], t0["image"], s0["label"]))(
        jax.random.key(seed)
    )
    raw = make_train_step(model, method, tx, 10_000, compute_dtype=dtype)
    step = jax.jit(lambda st, s, t, k: raw(st, s, t, jax.random.fold_in(k, st.step)), donate_argnums=0)
    key = jax.random.key(seed + 1)
    start = time.perf_counter()
    compiled = step.lower(state, s0, t0, key).compile()
    compile_s = time.perf_counter() - start
    # Model FLOPs from the step's jaxpr: XLA's cost_analysis misses convolutions run by cuDNN.
    flops = model_flops(lambda st, s, t, k: raw(st, s, t, jax.random.fold_in(k, st.step)), state, s0, t0, key)
    box = {"state": state}

    def run(n: int) -> float:
        st = box["state"]
        jax.block_until_ready(st)
        t = time.perf_counter()
        for i in range(n):
            s, tb = batches[i % 2]
            st, metrics = compiled(st, s, tb, key)
        jax.block_until_ready((st, metrics))
        box["state"] = st
        return time.perf_counter() - t

    run(2)  # warm-up
    return Runner(run, compile_s, flops, compiled)


# ----------------------------------------------------------------------------- PyTorch


def torch_runner(model_name: str, method_name: str, dtype: str, batch: int, seed: int = 0) -> Runner:
    """The same network, loss and optimiser in plain PyTorch eager (TLL style)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True  # as TLL's training scripts set it

    class GradientReverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, coeff):  # noqa: ANN001
            ctx.coeff = coeff
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001
            return -ctx.coeff * grad, None

    class LeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 20, 5, padding=2), nn.Conv2d(20, 50, 5, padding=2)
            self.fc = nn.Linear(50 * 7 * 7, 500)
            self.out_features = 500

        def forward(self, x):  # noqa: ANN001
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = F.relu(F.max_pool2d(self.conv2(x), 2))
            return F.relu(self.fc(torch.flatten(x, 1)))

    class Block(nn.Module):
        def __init__(self, cin: int, filters: int, stride: int) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, filters, 1, bias=False), nn.BatchNorm2d(filters)
            self.c2, self.b2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False), nn.BatchNorm2d(filters)
            self.c3, self.b3 = nn.Conv2d(filters, 4 * filters, 1, bias=False), nn.BatchNorm2d(4 * filters)
            self.proj = None
            if stride != 1 or cin != 4 * filters:
                self.proj = nn.Sequential(nn.Conv2d(cin, 4 * filters, 1, stride, bias=False), nn.BatchNorm2d(4 * filters))

        def forward(self, x):  # noqa: ANN001
            y = F.relu(self.b1(self.c1(x)))
            y = F.relu(self.b2(self.c2(y)))
            y = self.b3(self.c3(y))
            return F.relu(y + (x if self.proj is None else self.proj(x)))

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for stage, n in enumerate((3, 4, 6, 3)):
                for b in range(n):
                    layers.append(Block(cin, 64 * 2**stage, 2 if stage > 0 and b == 0 else 1))
                    cin = 4 * 64 * 2**stage
            self.layers = nn.Sequential(*layers)
            self.out_features = cin

        def forward(self, x):  # noqa: ANN001
            return self.layers(self.stem(x)).mean(dim=(2, 3))

    class Classifier(nn.Module):
        def __init__(self, backbone: nn.Module, classes: int) -> None:
            super().__init__()
            self.backbone = backbone
            self.bottleneck = nn.Sequential(nn.Linear(backbone.out_features, BOTTLENECK), nn.LayerNorm(BOTTLENECK), nn.ReLU())
            self.head = nn.Linear(BOTTLENECK, classes)

        def forward(self, x):  # noqa: ANN001
            f = self.bottleneck(self.backbone(x))
            return self.head(f), f

    def discriminator(d: int) -> nn.Module:
        return nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))

    def mk_mmd(s, t):  # noqa: ANN001, ANN202  (biased MK-MMD^2, bandwidths from the joint batch)
        joint = torch.cat([s, t])
        d2 = torch.cdist(joint, joint).pow(2)
        n = joint.shape[0]
        scale = (d2.sum() / (n * (n - 1))).detach().clamp_min(1e-12)
        k = sum(torch.exp(-d2 / (2 * a * scale)) for a in DEFAULT_ALPHAS) / len(DEFAULT_ALPHAS)
        m = s.shape[0]
        return k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()

    spec = MODELS[model_name]
    backbone = LeNet() if model_name == "lenet" else ResNet50()
    model = Classifier(backbone, spec["classes"]).to(dev)
    classes = spec["classes"]
    disc = {"dann": discriminator(BOTTLENECK), "cdan": discriminator(BOTTLENECK * classes)}.get(method_name)
    disc = disc.to(dev) if disc is not None else None
    params = list(model.parameters()) + (list(disc.parameters()) if disc is not None else [])
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    h, w, c = spec["shape"]
    g = torch.Generator().manual_seed(seed)
    batches = [
        tuple(
            x.to(dev)
            for x in (torch.rand(batch, c, h, w, generator=g), torch.rand(batch, c, h, w, generator=g), torch.randint(0, classes, (batch,), generator=g))
        )
        for _ in range(2)
    ]
    domain_labels = torch.cat([torch.ones(batch), torch.zeros(batch)]).to(dev)
    model.train()
    use_bf16 = dtype == "bfloat16"
    box = {"step": 0}

    def step(xs, xt, ys) -> torch.Tensor:  # noqa: ANN001
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=use_bf16):
            logits, f = model(torch.cat([xs, xt]))
        logits, f = logits.float(), f.float()
        n = xs.shape[0]
        loss = F.cross_entropy(logits[:n], ys)
        p = min(box["step"] / 10_000, 1.0)
        coeff = 2.0 / (1.0 + np.exp(-10 * p)) - 1.0
        if method_name == "dann":
            d = disc(GradientReverse.apply(f, coeff)).squeeze(1)
            loss = loss + F.binary_cross_entropy_with_logits(d, domain_labels)
        elif method_name == "cdan":  # multilinear conditioning, as TLL's CDAN default
            g = F.softmax(logits, dim=1).detach()
            hmap = torch.bmm(g.unsqueeze(2), GradientReverse.apply(f, coeff).unsqueeze(1)).flatten(1)
            d = disc(hmap).squeeze(1)
            loss = loss + F.binary_cross_entropy_with_logits(d, domain_labels)
        elif method_name == "dan":
            loss = loss + mk_mmd(f[:n], f[n:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        box["step"] += 1
        return loss

    def run(k: int) -> float:
        t = time.perf_counter()
        for i in range(k):
            loss = step(*batches[i % 2])
        loss.item()  # waits for the device
        return time.perf_counter() - t

    run(2)  # warm-up
    return Runner(run)


# ------------------------------------------------------------------------------- driver


def _num(x: float) -> str:
    """Three significant digits, thousands separated (0.847, 12.3, 1,234)."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def peak_flops(dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (None off GPU or for unknown GPUs)."""
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return None
    for kind, (bf16, f32) in PEAK_TFLOPS.items():
        if kind in dev.device_kind:
            return 1e12 * (bf16 if dtype == "bfloat16" else f32)
    return None


def cdan_registered() -> bool:
    """Whether a loss named ``cdan`` is registered (another module may add it)."""
    try:
        get_loss("cdan")
    except LossError:
        return False
    return True


def main() -> None:
    """Parses arguments, runs the interleaved rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet,resnet50", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--methods", default="source_only,dann,dan,cdan", help="comma list of: " + ", ".join(METHODS))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch", type=int, default=None, help="per-domain batch (default: lenet 32; resnet50 32 on GPU, 4 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default: lenet 50, resnet50 20 GPU / 2 CPU)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating JAX/PyTorch rounds (median reported)")
    ap.add_argument("--no-torch", action="store_true", help="time only the JAX step")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    on_gpu = jax.devices()[0].platform == "gpu"
    have_torch = not args.no_torch
    if have_torch:
        try:
            import torch
        except ImportError:
            console.print("[yellow]torch not installed: PyTorch columns skipped (pip install torch)[/]")
            have_torch = False
    if have_torch and on_gpu and not torch.cuda.is_available():
        console.print("[yellow]the PyTorch side runs on CPU (CPU wheel); a fair GPU ratio needs a CUDA torch[/]")
    notes = []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "cdan" in methods and not cdan_registered():
        methods.remove("cdan")
        notes.append("cdan: skipped, no loss named 'cdan' is registered in this checkout")

    rows = []
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        big = model_name != "lenet"
        batch = args.batch or (4 if big and not on_gpu else MODELS[model_name]["batch"])
        steps = args.steps or (50 if not big else (20 if on_gpu else 2))
        for method_name in methods:
            for dtype in [d.strip() for d in args.dtypes.split(",")]:
                console.log(f"{model_name} {method_name} {dtype}: compiling")
                jr = jax_runner(model_name, method_name, dtype, batch)
                tr = torch_runner(model_name, method_name, dtype, batch) if have_torch and model_name in TORCH_MODELS else None
                jax_eps, torch_eps = [], []
                for _ in range(args.rounds):  # alternate, so both see the same load
                    jax_eps.append(2 * batch * steps / jr.run(steps))
                    if tr is not None:
                        torch_eps.append(2 * batch * steps / tr.run(steps))
                j = statistics.median(jax_eps)
                t = statistics.median(torch_eps) if torch_eps else float("nan")
                peak = peak_flops(dtype)
                mfu = jr.flops_per_step * j / (2 * batch) / peak if peak else None
                rows.append((model_name, method_name, dtype, batch, steps, jr.compile_s, j, t, j / t, jr.flops_per_step, mfu))
                console.log(
                    f"  compile {jr.compile_s:.1f}s, {jr.flops_per_step / 1e9:.2f} GFLOP/step; jax {_num(j)} ex/s, "
                    f"torch {_num(t)} ex/s (rounds: {[_num(x) for x in jax_eps]} / {[_num(x) for x in torch_eps]})"
                )

    dev = jax.devices()[0]
    table = Table(title=f"train-step throughput on {dev.device_kind} ({dev.platform}, {jax.device_count()} device(s))")
    for col in ("model", "method", "dtype", "batch/domain", "steps", "JAX compile s", "JAX ex/s", "PyTorch ex/s", "JAX/PyTorch", "GFLOP/step", "MFU"):
        table.add_column(col, justify="right" if col not in ("model", "method", "dtype") else "left")
    for m, meth, dt, b, n, comp, j, t, ratio, fl, mfu in rows:
        table.add_row(
            m, meth, dt, str(b), str(n), f"{comp:.1f}", _num(j), "-" if np.isnan(t) else _num(t),
            "-" if np.isnan(ratio) else f"{ratio:.2f}x", f"{fl / 1e9:.2f}", "n/a" if mfu is None else f"{100 * mfu:.1f}%",
        )
    console.print(table)
    if have_torch:
        import torch

        console.print(f"jax {jax.__version__} ({dev.platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for note in notes:
        console.print(f"note: {note}")
    console.print("examples/s = (source + target examples) per second, median over rounds; MFU only on GPU")


if __name__ == "__main__":
    main()
