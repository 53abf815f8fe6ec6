"""Flax models split as adaptation methods need them: backbone -> bottleneck -> head."""

from da_framework.models.classifier import Bottleneck, Classifier
from da_framework.models.lenet import LeNet
from da_framework.models.mlp import MLP
from da_framework.models.registry import BACKBONES, ModelError, make_model
from da_framework.models.resnet import ResNet, ResNet8, ResNet18, ResNet20, ResNet50
from da_framework.models.vit import ViT, ViTB16, ViTTiny

__all__ = [
    "BACKBONES",
    "MLP",
    "Bottleneck",
    "Classifier",
    "LeNet",
    "ModelError",
    "ResNet",
    "ResNet8",
    "ResNet18",
    "ResNet20",
    "ResNet50",
    "ViT",
    "ViTB16",
    "ViTTiny",
    "make_model",
]
