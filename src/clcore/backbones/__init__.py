"""Backbones: ``CLBackbone(x) -> features`` with ``output_dim``.

Loaded on first use (``clcore.utils.lazy_exports``): an MLP run does not import the ResNets' torchvision models.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "CLBackbone": "clcore.backbones.base",
    "HATMaskBackbone": "clcore.backbones.hat_mask",
    "HATMaskMLP": "clcore.backbones.hat_mlp",
    "HATMaskResNet18": "clcore.backbones.hat_resnet",
    "MLP": "clcore.backbones.mlp",
    "ResNet18": "clcore.backbones.resnet",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
