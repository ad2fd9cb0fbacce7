"""ResNet-18 for small images (CIFAR-sized inputs), built on torchvision's blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from clcore.backbones.base import CLBackbone
from clcore.config_rules import choice_problem, is_int, raise_if_problems

Norm = Literal["batch", "group"]


def channel_problems(options: Mapping[str, Any]) -> list[str]:
    """``in_channels`` of a convolutional backbone: absent or null follows the benchmark."""
    channels = options.get("in_channels")
    if channels is not None and not (is_int(channels) and channels >= 1):
        return [
            f"backbone.in_channels={channels!r}: must be an integer >= 1, or null to follow the benchmark"
        ]
    return []


class ResNet18(CLBackbone):
    """torchvision ResNet-18 with the small-input stem (3x3 conv, stride 1, no max-pool).

    This is the standard change for 32x32 inputs (He et al. 2016, Sec. 4.2 CIFAR variant; used
    by GEM, DER and HAT-CIFAR reproductions): the ImageNet stem would shrink 32x32 to 1x1 features.
    ``output_dim`` = 512, the pooled feature of the last stage.
    """

    @classmethod
    def config_problems(cls, options: Mapping[str, Any], *, num_tasks: int | None = None) -> list[str]:
        problems = super().config_problems(options, num_tasks=num_tasks) + channel_problems(options)
        norm = options.get("norm", "batch")
        if norm not in get_args(Norm):
            problems.append(choice_problem("backbone.norm", norm, get_args(Norm)))
        return problems

    @classmethod
    def variant_for(cls, required: type, options: Mapping[str, Any]) -> tuple[type, dict] | None:
        """HAT's mask backbone: ``HATMaskResNet18``, the same network with a batch norm per task
        (from ``norm=batch``; none for group norm)."""
        from clcore.backbones.hat_resnet import HATMaskResNet18

        if not issubclass(HATMaskResNet18, required) or options.get("norm", "batch") != "batch":
            return None
        return HATMaskResNet18, {key: value for key, value in options.items() if key == "in_channels"}

    def __init__(self, in_channels: int = 3, norm: Norm = "batch") -> None:
        raise_if_problems(type(self).config_problems({"in_channels": in_channels, "norm": norm}))
        super().__init__(output_dim=512)
        norm_layer = {"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(32, c)}[norm]
        net = ResNet(BasicBlock, [2, 2, 2, 2], norm_layer=norm_layer)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.net(x), 1)
