"""Federated learning: FedAvg/FedProx/FedOpt simulated in one compiled program per round,
federated transfer and domain adaptation, and a Flower adapter for real deployments."""
