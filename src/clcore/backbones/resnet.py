"""ResNet-18 for small images (CIFAR-sized inputs), built on torchvision's blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from clcore.backbones.base import CLBackbone


class ResNet18(CLBackbone):
    """torchvision ResNet-18 with the small-input stem (3x3 conv, stride 1, no max-pool).

    This is the standard change for 32x32 inputs (He et al. 2016, Sec. 4.2 CIFAR variant; used
    by GEM, DER and HAT-CIFAR reproductions): the ImageNet stem would shrink 32x32 to 1x1 features.
    ``output_dim`` = 512, the pooled feature of the last stage.
    """

    def __init__(self, in_channels: int = 3, norm: str = "batch") -> None:
        super().__init__(output_dim=512)
        norm_layer = {"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(32, c)}.get(norm)
        if norm_layer is None:
            raise ValueError(f"ResNet18 norm must be 'batch' or 'group', got {norm!r}")
        net = ResNet(BasicBlock, [2, 2, 2, 2], norm_layer=norm_layer)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.net(x), 1)
