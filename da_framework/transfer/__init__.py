"""Transfer between models: weight transfer, freezing and fine-tuning, feature-space
alignment baselines, compression (pruning, int8, QAT) and distillation.  See docs/transfer.md.

=====================  ====================================================================
``weights``            :func:`transfer_params` (match by path and shape, rename, include,
                       widen) and its :class:`TransferReport`
``saving``             :func:`save_model` / :func:`restore_model` (orbax)
``freezing``           :func:`freeze`, :func:`discriminative_lr`, :func:`gradual_unfreezing`
                       (``optax.multi_transform``)
``finetune``           :func:`fit` / :func:`accuracy` on in-memory arrays, few-label subsets
``pruning``            magnitude masks, Zhu & Gupta schedule, mask-keeping optax transforms
``quantization``       int8 per-channel PTQ, fake quantisation with a straight-through gradient
``size``               storage bytes of dense, sparse and quantised parameters
``student``            :func:`distill` a teacher into a student
``subspace``           subspace alignment, TCA and CORAL feature transforms on feature arrays
=====================  ====================================================================
"""

from da_framework.transfer.freezing import discriminative_lr, freeze, gradual_unfreezing, label_params
from da_framework.transfer.pruning import gradual_pruning, keep_masks, magnitude_masks, polynomial_sparsity, prune, sparsity
from da_framework.transfer.quantization import dequantize_params, fake_quant, fake_quantize_params, quantize, quantize_params
from da_framework.transfer.saving import restore_model, save_model
from da_framework.transfer.size import storage_bytes
from da_framework.transfer.subspace import coral, subspace_alignment, tca
from da_framework.transfer.weights import TransferEntry, TransferError, TransferReport, flatten, transfer_params, unflatten

__all__ = [
    "TransferEntry",
    "TransferError",
    "TransferReport",
    "coral",
    "dequantize_params",
    "discriminative_lr",
    "fake_quant",
    "fake_quantize_params",
    "flatten",
    "freeze",
    "gradual_pruning",
    "gradual_unfreezing",
    "keep_masks",
    "label_params",
    "magnitude_masks",
    "polynomial_sparsity",
    "prune",
    "quantize",
    "quantize_params",
    "restore_model",
    "save_model",
    "sparsity",
    "storage_bytes",
    "subspace_alignment",
    "tca",
    "transfer_params",
    "unflatten",
]
