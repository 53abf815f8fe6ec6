"""PyTorch eager twins of the benchmarked da_framework steps (for ``step_throughput.py``).

The same networks, losses and optimiser as the JAX side, written the way
Transfer-Learning-Library runs them: an ``nn.Module``, a gradient-reversal
``autograd.Function``, a domain discriminator, MK-MMD on the bottleneck features,
``loss.backward(); optimizer.step()``.  Imported only when torch is installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from da_framework.losses.mmd import DEFAULT_ALPHAS

BOTTLENECK = 256


class GradientReverse(torch.autograd.Function):
    """Identity forward, gradient times -coeff backward (DANN's gradient reversal layer)."""

    @staticmethod
    def forward(ctx, x, coeff):  # noqa: ANN001, ANN205, D102
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205, D102
        return -ctx.coeff * grad, None


class LeNet(nn.Module):
    """da_framework's ``lenet``: conv20-pool-relu-conv50-pool-relu-dense500, SAME padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5, padding=2), nn.Conv2d(20, 50, 5, padding=2)
        self.fc = nn.Linear(50 * 7 * 7, 500)
        self.out_features = 500

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return F.relu(self.fc(torch.flatten(x, 1)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions + BatchNorm with an identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, filters: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, filters, 3, stride, 1, bias=False), nn.BatchNorm2d(filters)
        self.c2, self.b2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False), nn.BatchNorm2d(filters)
        self.proj = None
        if stride != 1 or cin != filters:
            self.proj = nn.Sequential(nn.Conv2d(cin, filters, 1, stride, bias=False), nn.BatchNorm2d(filters))

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (4x expansion) block of ResNet-50."""

    def __init__(self, cin: int, filters: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, filters, 1, bias=False), nn.BatchNorm2d(filters)
        self.c2, self.b2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False), nn.BatchNorm2d(filters)
        self.c3, self.b3 = nn.Conv2d(filters, 4 * filters, 1, bias=False), nn.BatchNorm2d(4 * filters)
        self.proj = None
        if stride != 1 or cin != 4 * filters:
            self.proj = nn.Sequential(nn.Conv2d(cin, 4 * filters, 1, stride, bias=False), nn.BatchNorm2d(4 * filters))

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)))
        y = self.b3(self.c3(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet8(nn.Module):
    """da_framework's ``resnet8``: 3x3 stem (16) + one BasicBlock per stage (16, 32, 64), mean-pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.out_features = 64

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class ResNet50(nn.Module):
    """ImageNet ResNet-50: 7x7/2 stem + max-pool, bottleneck stages (3, 4, 6, 3), mean-pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for stage, n in enumerate((3, 4, 6, 3)):
            for b in range(n):
                layers.append(Bottleneck(cin, 64 * 2**stage, 2 if stage > 0 and b == 0 else 1))
                cin = 4 * 64 * 2**stage
        self.layers = nn.Sequential(*layers)
        self.out_features = cin

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class DTN(nn.Module):
    """da_framework's ``dtn`` (tllib's digits DTN): 3 stride-2 5x5 convs with BN, Dropout2d, ReLU; dense 512."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, rate in ((3, 64, 0.1), (64, 128, 0.3), (128, 256, 0.5)):
            layers += [nn.Conv2d(cin, cout, 5, 2, 2), nn.BatchNorm2d(cout), nn.Dropout2d(rate), nn.ReLU()]
        layers += [nn.Flatten(1), nn.Linear(256 * 4 * 4, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.5)]
        self.layers = nn.Sequential(*layers)
        self.out_features = 512

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        return self.layers(x)


BACKBONES: dict[str, Callable[[], nn.Module]] = {"lenet": LeNet, "dtn": DTN, "resnet8": ResNet8, "resnet50": ResNet50}


class Classifier(nn.Module):
    """backbone -> bottleneck (Linear, LayerNorm, ReLU) -> head, as da_framework's Classifier."""

    def __init__(self, backbone: nn.Module, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(nn.Linear(backbone.out_features, BOTTLENECK), nn.LayerNorm(BOTTLENECK), nn.ReLU())
        self.head = nn.Linear(BOTTLENECK, classes)

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        f = self.bottleneck(self.backbone(x))
        return self.head(f), f


def discriminator(d: int) -> nn.Module:
    """DANN's domain discriminator: d -> 256 -> 256 -> 1 with ReLUs."""
    return nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))


def mk_mmd(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Biased MK-MMD^2 with Gaussian kernels, bandwidths scaled by the joint batch's mean distance."""
    joint = torch.cat([s, t])
    d2 = torch.cdist(joint, joint).pow(2)
    n = joint.shape[0]
    scale = (d2.sum() / (n * (n - 1))).detach().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (2 * a * scale)) for a in DEFAULT_ALPHAS) / len(DEFAULT_ALPHAS)
    m = s.shape[0]
    return k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()


def torch_step_runner(
    model_name: str, method_name: str, dtype: str, batch: int, shape: tuple[int, int, int], classes: int, seed: int = 0
) -> Callable[[int], float]:
    """``run(n)``: n PyTorch eager train steps of ``method_name`` on ``model_name``; returns seconds."""
    torch.manual_seed(seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True  # as TLL's training scripts set it
    model = Classifier(BACKBONES[model_name](), classes).to(dev)
    disc = {"dann": discriminator(BOTTLENECK), "cdan": discriminator(BOTTLENECK * classes)}.get(method_name)
    disc = disc.to(dev) if disc is not None else None
    params = list(model.parameters()) + (list(disc.parameters()) if disc is not None else [])
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    h, w, c = shape
    g = torch.Generator().manual_seed(seed)
    batches = [
        tuple(x.to(dev) for x in (torch.rand(batch, c, h, w, generator=g), torch.rand(batch, c, h, w, generator=g),
                                  torch.randint(0, classes, (batch,), generator=g)))
        for _ in range(2)
    ]
    domain_labels = torch.cat([torch.ones(batch), torch.zeros(batch)]).to(dev)
    model.train()
    use_bf16 = dtype == "bfloat16"
    box = {"step": 0}

    def step(xs: torch.Tensor, xt: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
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
            sm = F.softmax(logits, dim=1).detach()
            hmap = torch.bmm(sm.unsqueeze(2), GradientReverse.apply(f, coeff).unsqueeze(1)).flatten(1)
            loss = loss + F.binary_cross_entropy_with_logits(disc(hmap).squeeze(1), domain_labels)
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
    return run
