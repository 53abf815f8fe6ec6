"""Transfer between models: weight transfer, freezing and fine-tuning, feature-space
alignment baselines, compression (pruning, int8, QAT) and distillation.  See docs/transfer.md."""

from da_framework.transfer.saving import restore_model, save_model
from da_framework.transfer.weights import TransferEntry, TransferError, TransferReport, flatten, transfer_params, unflatten

__all__ = [
    "TransferEntry",
    "TransferError",
    "TransferReport",
    "flatten",
    "restore_model",
    "save_model",
    "transfer_params",
    "unflatten",
]
