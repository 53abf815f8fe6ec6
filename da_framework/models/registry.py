"""Models looked up by name: ``make_model("lenet", num_classes=10, bottleneck_dim=256)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from da_framework.errors import UserError
from da_framework.models.arm import ARMFeaturizer
from da_framework.models.classifier import BOTTLENECK_NORMS, Classifier, check_head
from da_framework.models.dtn import DTN
from da_framework.models.lenet import LeNet, lenet_shot, lenet_tllib
from da_framework.models.mlp import MLP
from da_framework.models.mnist_cnn import MNISTCNN
from da_framework.models.mtl import MTLFeaturizer
from da_framework.models.resnet import ResNet8, ResNet18, ResNet20, ResNet50
from da_framework.models.text import BiLSTM, TextCNN
from da_framework.models.vit import ViTB16, ViTTiny

BACKBONES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (MLP, "2-layer MLP (256, 256) on flattened inputs"),
    "lenet": (LeNet, "LeNet CNN for digits: conv20-conv50-dense500"),
    "lenet_tllib": (lenet_tllib, "tllib's digits LeNet: VALID convs, Dropout2d 0.5, 800 -> 500, Dropout 0.5"),
    "lenet_shot": (lenet_shot, "SHOT's digits LeNetBase: VALID convs, Dropout2d 0.5, 800 features (no dense layer)"),
    "dtn": (DTN, "tllib's DTN for 32x32 RGB digits: 3 stride-2 convs 64-128-256 with BN + Dropout2d, dense 512"),
    "mnist_cnn": (MNISTCNN, "DomainBed's MNIST_CNN: 4 convs 64-128-128-128 with ReLU + GroupNorm(8), mean-pool, 128 features"),
    "resnet8": (ResNet8, "CIFAR-style ResNet-8, width 16"),
    "resnet20": (ResNet20, "CIFAR-style ResNet-20, width 16"),
    "resnet18": (ResNet18, "ImageNet-style ResNet-18"),
    "resnet50": (ResNet50, "ImageNet-style ResNet-50 (bottleneck blocks)"),
    "vit_tiny": (ViTTiny, "small Vision Transformer (patch 4, width 32, 2 blocks) for tests"),
    "vit_b16": (ViTB16, "ViT-Base/16 (Dosovitskiy et al. 2021), 768 features"),
    "text_cnn": (TextCNN, "token ids: embedding + 1-D convolutions (3, 5) + max-pool"),
    "bilstm": (BiLSTM, "token ids: embedding + bidirectional LSTM + mean-pool"),
    "arm": (ARMFeaturizer, "DomainBed's ARM-CML: featurizer([x, support-group mean of a context net's map])"),
    "mtl": (MTLFeaturizer, "DomainBed's MTL: [featurizer(x), its mean over the batch]"),
}


class ModelError(UserError):
    """Raised for an unknown model name or bad model arguments."""


# model_kwargs that say what to load into the model after initialisation, not how to build it:
# train() reads them (da_framework.transfer.pretrained.load_for_training), make_model refuses them.
LOAD_KEYS = ("pretrained", "pretrained_head")
# model_kwargs that shape the classifier head (Classifier.head_hidden etc.), not the backbone.
HEAD_KEYS = ("head_hidden", "head_dropout", "head_norm")
# model_kwargs of the linear head and the bottleneck (Classifier's fields of the same names).
CLASSIFIER_KEYS = ("head_weight_norm", "bottleneck_relu", "bottleneck_dropout")


def build_kwargs(model_kwargs: Any) -> dict[str, Any]:
    """A config's ``model_kwargs`` without the loading keys (:data:`LOAD_KEYS`): the backbone's arguments."""
    return {k: v for k, v in dict(model_kwargs).items() if k not in LOAD_KEYS}


def _classifier_kwargs(kw: dict[str, Any], deep_head: bool) -> dict[str, Any]:
    """Checks the :data:`CLASSIFIER_KEYS` model_kwargs (one-line :class:`ModelError` for a bad value)."""
    for name in ("head_weight_norm", "bottleneck_relu"):
        if name in kw and not isinstance(kw[name], bool):
            raise ModelError(f"model_kwargs {name} must be True or False, got {kw[name]!r}")
    rate = kw.get("bottleneck_dropout", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ModelError(f"model_kwargs bottleneck_dropout must be a rate in [0, 1), got {rate!r}")
    if kw.get("head_weight_norm") and deep_head:
        raise ModelError("model_kwargs head_weight_norm makes the head one weight-normalised linear layer; "
                         "drop head_hidden or head_weight_norm")
    return kw


def make_model(
    name: str, num_classes: int, bottleneck_dim: int | None = None, bottleneck_norm: str = "layer",
    **backbone_kwargs: Any,
) -> Classifier:
    """Builds ``Classifier(backbone=<name>(**backbone_kwargs), ...)`` (``bottleneck_norm``:
    ``"layer"``, ``"batch"`` as tllib, or ``"none"``).

    Raises:
      ModelError: for an unknown name (the message lists valid names), bad kwargs, or a
        loading key (:data:`LOAD_KEYS`), which only a caller that initialises the weights reads.
    """
    if name not in BACKBONES:
        raise ModelError(f"unknown model {name!r}; valid models: {', '.join(BACKBONES)}")
    loading = [k for k in LOAD_KEYS if k in backbone_kwargs]
    if loading:
        raise ModelError(
            f"model_kwargs {loading[0]!r} is loaded by train() after initialisation, not built by make_model; "
            "pass **build_kwargs(model_kwargs) and load the file with da_framework.transfer.pretrained.load_pretrained"
        )
    head = {k: backbone_kwargs.pop(k) for k in HEAD_KEYS if k in backbone_kwargs}
    if head and "head_hidden" not in head:
        raise ModelError(f"model_kwargs {', '.join(sorted(head))} need head_hidden, the deep head's widths, e.g. (1024, 1024)")
    if head:
        head["head_hidden"] = check_head(head["head_hidden"], head.get("head_dropout", 0.5), head.get("head_norm", "batch"))
    head.update(_classifier_kwargs({k: backbone_kwargs.pop(k) for k in CLASSIFIER_KEYS if k in backbone_kwargs},
                                   "head_hidden" in head))
    try:
        backbone = BACKBONES[name][0](**backbone_kwargs)
    except TypeError as e:
        raise ModelError(f"bad arguments for model {name!r}: {e}") from None
    if bottleneck_norm not in BOTTLENECK_NORMS:
        raise ModelError(f"unknown bottleneck_norm {bottleneck_norm!r}; valid: {', '.join(BOTTLENECK_NORMS)}")
    return Classifier(backbone=backbone, num_classes=num_classes, bottleneck_dim=bottleneck_dim,
                      bottleneck_norm=bottleneck_norm, **head)
