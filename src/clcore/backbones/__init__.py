"""Backbones: ``CLBackbone(x) -> features`` with ``output_dim``."""

from clcore.backbones.base import CLBackbone
from clcore.backbones.hat_mask import HATMaskBackbone
from clcore.backbones.hat_mlp import HATMaskMLP
from clcore.backbones.hat_resnet import HATMaskResNet18
from clcore.backbones.mlp import MLP
from clcore.backbones.resnet import ResNet18

__all__ = ["CLBackbone", "HATMaskBackbone", "HATMaskMLP", "HATMaskResNet18", "MLP", "ResNet18"]
