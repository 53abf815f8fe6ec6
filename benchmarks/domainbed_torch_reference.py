"""DomainBed's ERM / IRM / VREx / Mixup / MMD on Colored/RotatedMNIST in PyTorch eager: the reference our runs sit beside.

A PyTorch re-statement of what ``domainbed/algorithms.py`` (``ERM``, ``IRM``, ``VREx``, ``Mixup``,
``MMD``),
``domainbed/networks.py`` (``MNIST_CNN``) and ``domainbed/scripts/train.py`` run for
ColoredMNIST and RotatedMNIST, written from reading them (facebookresearch/DomainBed), on **the
same arrays** as da_framework's ``cmnist/<env>`` and ``rmnist/<angle>`` domains
(``da_framework/data/dg_mnist.py``: same environments, same in/out splits), so that a difference between this script's curve and
``da run cmnist_dg ...`` is the training code's, not the data's:

* the network is ``MNIST_CNN`` (four 3x3 convs 64-128-128-128, the second with stride 2,
  each ReLU then GroupNorm(8); mean over positions) and one ``nn.Linear(128, classes)``
  (ColoredMNIST: 2 input channels, 2 classes; RotatedMNIST: 1 and 10), with PyTorch's
  default initialisation, as DomainBed builds it;
* every step draws ``batch_size`` examples with replacement from each training
  environment's in-split (DomainBed's ``InfiniteDataLoader`` samples with replacement),
  forwards them as one batch, and takes one Adam step (lr 1e-3, no weight decay);
* IRM: ``mean_e R_e + w * mean_e (dR_e(z[::2])/ds * dR_e(z[1::2])/ds)`` at ``s = 1``,
  ``w = irm_lambda`` from step ``anneal_iters`` on, 1 before; VREx: ``mean_e R_e + w *
  mean_e (R_e - mean R)^2`` with ``vrex_lambda``, 1 before; both re-create Adam at the
  switch step, as DomainBed does;
* Mixup: the environments in a random order, each paired with the next (cyclically), one
  ``lam ~ Beta(alpha, alpha)`` per pair (``mixup_alpha`` 0.2), the model run on
  ``lam x_i + (1 - lam) x_j`` and ``lam CE(., y_i) + (1 - lam) CE(., y_j)`` summed over pairs
  and divided by the number of environments (``random_pairs_of_minibatches``); no ERM term;
* MMD: ``mean_e R_e + mmd_gamma * mean_{e<f} MMD(phi_e, phi_f)`` on the featurizer's outputs,
  with ``AbstractMMD``'s Gaussian kernel: squared distances ``||a||^2 + ||b||^2 - 2 a.b``
  clamped below at 1e-30, the sum of ``exp(-g D)`` over ``g in (0.001, ..., 1000)``, and the
  biased estimate ``mean Kxx + mean Kyy - 2 mean Kxy``; ``mmd_gamma`` 1.0 from the first step
  (no anneal);
* evaluation: accuracy on the test environment's in-split (the number DomainBed reports)
  and on the training environments' out-splits (training-domain validation).

Run (cores otherwise idle; about 0.5 s a step on the 2-core CPUs here):

    DA_DATA_DIR=../shared/data python benchmarks/domainbed_torch_reference.py \
        --algorithm IRM --test-env=-90% --steps 1000 --anneal-iters 500 --out /tmp/irm_torch.json

RotatedMNIST ERM, test environment 75 degrees, 500 steps (DomainBed's train.py evaluates every
``checkpoint_freq`` 100 steps on MNIST):

    DA_DATA_DIR=../shared/data python benchmarks/domainbed_torch_reference.py \
        --dataset rmnist --algorithm ERM --test-env 75 --steps 500 --out /tmp/erm_rmnist_75.json

The da_framework run of the same workload is
``da run cmnist_dg -m "cross_entropy + irm(steps_of=1000)" --steps 1000`` (IRM's switch at
step 500 of 1000: ``steps_of`` makes ``irm_penalty_anneal_iters`` count steps).
Differences that remain, stated: initialisation (flax LeCun-normal there, PyTorch's default
uniform here) and the random streams (batches, weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import autograd, nn

from da_framework.data.dg_mnist import COLOUR_FLIP, ROTATIONS
from da_framework.data.registry import get_domain

ALGORITHMS = ("ERM", "IRM", "VREx", "Mixup", "MMD")
# DomainBed's hparams_registry defaults: irm_lambda, vrex_lambda, mmd_gamma
DEFAULT_LAMBDA = {"ERM": 0.0, "IRM": 1e2, "VREx": 1e1, "Mixup": 0.0, "MMD": 1.0}
MMD_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # AbstractMMD.gaussian_kernel's widths
# dataset -> (environment names, input channels, classes), as DomainBed's datasets.py defines them
DATASETS = {"cmnist": (tuple(COLOUR_FLIP), 2, 2), "rmnist": (tuple(str(a) for a in ROTATIONS), 1, 10)}
MIXUP_ALPHA = 0.2  # DomainBed's default mixup_alpha


class MNISTCNN(nn.Module):
    """DomainBed's MNIST_CNN featurizer with its linear classifier (defaults: ColoredMNIST's 2 channels, 2 classes)."""

    def __init__(self, in_channels: int = 2, num_classes: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c, s in zip((64, 128, 128, 128), (1, 2, 1, 1)):
            layers += [nn.Conv2d(c_in, c, 3, stride=s, padding=1), nn.ReLU(), nn.GroupNorm(8, c)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(128, num_classes)

    def featurize(self, x: torch.Tensor) -> torch.Tensor:
        """The featurizer's output: the last GroupNorm's activations averaged over positions."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.featurize(x))


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's IRMv1 two-halves estimate: dR(s z[::2])/ds * dR(s z[1::2])/ds at s = 1."""
    scale = torch.tensor(1.0, requires_grad=True)
    g1 = autograd.grad(F.cross_entropy(logits[::2] * scale, y[::2]), [scale], create_graph=True)[0]
    g2 = autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
    return g1 * g2


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's ``AbstractMMD.mmd`` with the Gaussian kernel (``my_cdist`` then the kernel sum)."""

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = torch.addmm(b.pow(2).sum(-1, keepdim=True).T, a, b.T, alpha=-2).add(a.pow(2).sum(-1, keepdim=True))
        d = d.clamp_min(1e-30)
        return sum(torch.exp(-g * d) for g in MMD_GAMMAS)

    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def step_loss(algorithm: str, logits: list[torch.Tensor], labels: list[torch.Tensor], weight: float,
              features: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The algorithm's loss of one step over the environments' logits (and, for MMD, features), and its parts."""
    risks = torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, labels)])
    if algorithm == "ERM":
        return risks.mean(), {"nll": risks.mean().item()}
    if algorithm == "MMD":
        if features is None:
            raise ValueError("MMD needs the environments' features")
        pairs = [gaussian_mmd(features[i], features[j]) for i in range(len(features))
                 for j in range(i + 1, len(features))]
        penalty = torch.stack(pairs).mean()
    elif algorithm == "IRM":
        penalty = torch.stack([irm_penalty(z, y) for z, y in zip(logits, labels)]).mean()
    else:
        penalty = ((risks - risks.mean()) ** 2).mean()
    return risks.mean() + weight * penalty, {"nll": risks.mean().item(), "penalty": penalty.item()}


def mixup_loss(model: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor], perm: list[int],
               lams: list[float]) -> torch.Tensor:
    """DomainBed's Mixup objective for given draws: pair p is (perm[p], perm[(p + 1) % K]),
    mixed with weight ``lams[p]`` on its first environment."""
    total = 0.0
    for p in range(len(xs)):
        i, j = perm[p], perm[(p + 1) % len(xs)]
        n = min(len(xs[i]), len(xs[j]))
        z = model(lams[p] * xs[i][:n] + (1 - lams[p]) * xs[j][:n])
        total = total + lams[p] * F.cross_entropy(z, ys[i][:n]) + (1 - lams[p]) * F.cross_entropy(z, ys[j][:n])
    return total / len(xs)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy of ``model`` in eval mode over ``(x, y)``."""
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return correct / len(x)


def load_env(name: str, split: str, data_dir: str | None, dataset: str = "cmnist") -> tuple[torch.Tensor, torch.Tensor]:
    """One environment split of da_framework's ColoredMNIST / RotatedMNIST as NCHW float32 / int64 tensors."""
    arrays = get_domain(f"{dataset}/{name}", data_dir).split(split).arrays
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(arrays["image"], (0, 3, 1, 2))))
    return x, torch.from_numpy(arrays["label"].astype(np.int64))


def run(args: argparse.Namespace) -> dict:
    """Trains and evaluates; returns the record (config, history, versions, wall time)."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    data_dir = os.environ.get("DA_DATA_DIR")
    envs, channels, classes = DATASETS[args.dataset]
    if args.test_env not in envs:
        raise SystemExit(f"{args.dataset} has no test environment {args.test_env!r}; valid: {', '.join(envs)}")
    train_envs = [e for e in envs if e != args.test_env]
    train = [load_env(e, "train", data_dir, args.dataset) for e in train_envs]
    val = {e: load_env(e, "val", data_dir, args.dataset) for e in train_envs}
    test = load_env(args.test_env, "test", data_dir, args.dataset)
    if args.eval_limit:
        val = {e: (x[:args.eval_limit], y[:args.eval_limit]) for e, (x, y) in val.items()}
        test = (test[0][:args.eval_limit], test[1][:args.eval_limit])
    model = MNISTCNN(channels, classes)
    make_opt = lambda: torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=0.0)
    opt = make_opt()
    lam = DEFAULT_LAMBDA[args.algorithm] if args.penalty_lambda is None else args.penalty_lambda
    history: list[dict] = []
    start = time.perf_counter()
    for step in range(args.steps):
        if args.algorithm in ("IRM", "VREx") and step == args.anneal_iters:
            opt = make_opt()  # DomainBed re-creates Adam at the switch
        weight = lam if step >= args.anneal_iters or args.algorithm == "MMD" else 1.0
        idx = [rng.integers(0, len(x), args.batch_size) for x, _ in train]
        xs = [x[i] for (x, _), i in zip(train, idx)]
        ys = [y[i] for (_, y), i in zip(train, idx)]
        if args.algorithm == "Mixup":  # DomainBed's Mixup never runs the unmixed batch through the model
            perm = [int(i) for i in rng.permutation(len(xs))]
            loss = mixup_loss(model, xs, ys, perm, [float(rng.beta(MIXUP_ALPHA, MIXUP_ALPHA)) for _ in xs])
            all_logits, parts = None, {"mixup": loss.item()}
        else:
            all_features = model.featurize(torch.cat(xs))
            all_logits = model.classifier(all_features)
            logits = list(torch.split(all_logits, args.batch_size))
            loss, parts = step_loss(args.algorithm, logits, ys, weight, list(torch.split(all_features, args.batch_size)))
        if not torch.isfinite(loss):
            raise SystemExit(f"step {step + 1}: non-finite loss {float(loss)}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        done = step + 1
        if done % args.log_every == 0:
            if all_logits is None:
                with torch.no_grad():
                    all_logits = model(torch.cat(xs))
            acc = float((all_logits.argmax(1) == torch.cat(ys)).float().mean())
            history.append({"step": done, "loss": loss.item(), **parts, "train_accuracy": acc})
            print(json.dumps(history[-1]), flush=True)
        if done % args.eval_every == 0 or done == args.steps:
            row = {"step": done, "target_test_accuracy": accuracy(model, *test)}
            for e, (x, y) in val.items():
                row[f"source_val_accuracy/{args.dataset}/{e}"] = accuracy(model, x, y)
            row["source_val_accuracy"] = float(np.mean([row[f"source_val_accuracy/{args.dataset}/{e}"] for e in val]))
            history.append(row)
            print(json.dumps(row), flush=True)
    return {
        "config": {**vars(args), "penalty_lambda": lam, "train_envs": train_envs},
        "history": history,
        "wall_time_s": time.perf_counter() - start,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "platform": {"processor": platform.processor() or platform.machine(), "threads": args.threads},
    }


def main() -> None:
    """Parses the command line, runs, writes the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", choices=ALGORITHMS, default="IRM")
    p.add_argument("--dataset", choices=tuple(DATASETS), default="cmnist")
    p.add_argument("--test-env", default="-90%", help="cmnist: +90%%, +80%%, -90%%; rmnist: 0, 15, ..., 75")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--anneal-iters", type=int, default=500, help="DomainBed's *_penalty_anneal_iters, in steps")
    p.add_argument("--penalty-lambda", type=float, default=None, help="irm_lambda / vrex_lambda / mmd_gamma (default DomainBed's)")
    p.add_argument("--batch-size", type=int, default=64, help="per training environment")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N examples of each split (0: all)")
    p.add_argument("--out", required=True, help="path of the JSON record")
    args = p.parse_args()
    record = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out} ({record['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
