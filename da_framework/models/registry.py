"""Models looked up by name: ``make_model("lenet", num_classes=10, bottleneck_dim=256)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from da_framework.errors import UserError
from da_framework.models.classifier import Classifier
from da_framework.models.lenet import LeNet, lenet_tllib
from da_framework.models.mlp import MLP
from da_framework.models.mnist_cnn import MNISTCNN
from da_framework.models.resnet import ResNet8, ResNet18, ResNet20, ResNet50
from da_framework.models.text import BiLSTM, TextCNN
from da_framework.models.vit import ViTB16, ViTTiny

BACKBONES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (MLP, "2-layer MLP (256, 256) on flattened inputs"),
    "lenet": (LeNet, "LeNet CNN for digits: conv20-conv50-dense500"),
    "lenet_tllib": (lenet_tllib, "tllib's digits LeNet: VALID convs, Dropout2d 0.5, 800 -> 500, Dropout 0.5"),
    "mnist_cnn": (MNISTCNN, "DomainBed's MNIST_CNN: 4 convs 64-128-128-128 with ReLU + GroupNorm(8), mean-pool, 128 features"),
    "resnet8": (ResNet8, "CIFAR-style ResNet-8, width 16"),
    "resnet20": (ResNet20, "CIFAR-style ResNet-20, width 16"),
    "resnet18": (ResNet18, "ImageNet-style ResNet-18"),
    "resnet50": (ResNet50, "ImageNet-style ResNet-50 (bottleneck blocks)"),
    "vit_tiny": (ViTTiny, "small Vision Transformer (patch 4, width 32, 2 blocks) for tests"),
    "vit_b16": (ViTB16, "ViT-Base/16 (Dosovitskiy et al. 2021), 768 features"),
    "text_cnn": (TextCNN, "token ids: embedding + 1-D convolutions (3, 5) + max-pool"),
    "bilstm": (BiLSTM, "token ids: embedding + bidirectional LSTM + mean-pool"),
}


class ModelError(UserError):
    """Raised for an unknown model name or bad model arguments."""


def make_model(
    name: str, num_classes: int, bottleneck_dim: int | None = None, **backbone_kwargs: Any
) -> Classifier:
    """Builds ``Classifier(backbone=<name>(**backbone_kwargs), ...)``.

    Raises:
      ModelError: for an unknown name (the message lists valid names) or bad kwargs.
    """
    if name not in BACKBONES:
        raise ModelError(f"unknown model {name!r}; valid models: {', '.join(BACKBONES)}")
    try:
        backbone = BACKBONES[name][0](**backbone_kwargs)
    except TypeError as e:
        raise ModelError(f"bad arguments for model {name!r}: {e}") from None
    return Classifier(backbone=backbone, num_classes=num_classes, bottleneck_dim=bottleneck_dim)
