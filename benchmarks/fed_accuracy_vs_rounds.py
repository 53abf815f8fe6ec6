"""Global-model test accuracy vs rounds: FedAvg and FedProx under IID and Dirichlet(0.1).

10 clients over the embedded ``digits/source`` train split, 5 sampled per round, small
LeNet, evaluated every round on ``digits/source`` test.  Writes a PNG plot and the numbers.

Run:  nice -n 10 python benchmarks/fed_accuracy_vs_rounds.py --rounds 30 --out results/fed_accuracy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    """Runs the four settings and plots accuracy vs rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from da_framework.config import ExperimentConfig
    from da_framework.federated.config import FedConfig
    from da_framework.federated.runner import run_federated

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--mu", type=float, default=0.1, help="FedProx mu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/fed_accuracy")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = ExperimentConfig(model="lenet", model_kwargs={"channels": (8, 16), "dense": 64}, bottleneck_dim=32, seed=args.seed)
    curves: dict[str, list[float]] = {}
    for split, extra in (("IID", {"partition": "iid"}), ("Dirichlet(0.1)", {"partition": "dirichlet", "dirichlet_alpha": 0.1})):
        for algo in ("fedavg", "fedprox"):
            fed = FedConfig(algorithm=algo, prox_mu=args.mu, rounds=args.rounds, num_clients=10, clients_per_round=5,
                            local_epochs=2, local_batch_size=16, client_lr=0.05, eval_every=1, **extra)
            res = run_federated(config, fed)
            label = f"{algo} {split}"
            curves[label] = [h["test_accuracy"] for h in res.history]
            print(f"{label:24s} acc by round: " + " ".join(f"{a:.3f}" for a in curves[label]), flush=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, acc in curves.items():
        ax.plot(range(1, len(acc) + 1), acc, label=label, linestyle="-" if "IID" in label else "--")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (digits/source)")
    ax.set_title(f"10 clients, 5/round, E=2, B=16, FedProx mu={args.mu}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "fed_accuracy_vs_rounds.png", dpi=120)
    (out / "fed_accuracy_vs_rounds.json").write_text(json.dumps({"config": vars(args), "curves": curves}, indent=1))
    print(f"-> {out / 'fed_accuracy_vs_rounds.png'}")


if __name__ == "__main__":
    main()
