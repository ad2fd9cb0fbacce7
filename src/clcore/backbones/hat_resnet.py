"""Small-input ResNet-18 with HAT channel masks and per-task batch norm (Serra et al. 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from clcore.backbones.hat_mask import HATMaskBackbone
from clcore.backbones.resnet import channel_problems
from clcore.config_rules import is_int, raise_if_problems


def per_task_batch_norm(channels: int, num_tasks: int) -> nn.ModuleList:
    """One ``BatchNorm2d`` per task: a task's statistics and affine terms are its own.

    A shared batch norm would let later tasks overwrite the running statistics earlier tasks
    are tested with, which no gradient mask can prevent.
    """
    return nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_tasks))


class HATMaskBasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with a mask on each conv's output channels.

    ``y = relu(a_1 * bn1_t(conv1(x)))``, ``y = a_2 * bn2_t(conv2(y))``,
    shortcut ``= x`` or ``a_d * bnd_t(convd(x))``, out ``= relu(y + shortcut)``.
    """

    expansion = 1

    def __init__(self, name: str, in_channels: int, channels: int, stride: int, num_tasks: int) -> None:
        super().__init__()
        self.conv1_name, self.conv2_name, self.downsample_name = (
            f"{name}_conv1",
            f"{name}_conv2",
            f"{name}_downsample",
        )
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = per_task_batch_norm(channels, num_tasks)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = per_task_batch_norm(channels, num_tasks)
        self.has_downsample = stride != 1 or in_channels != channels
        if self.has_downsample:
            self.downsample = nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False)
            self.bn_downsample = per_task_batch_norm(channels, num_tasks)

    def forward(self, x: Tensor, masks: dict[str, Tensor], task_id: int) -> Tensor:
        y = torch.relu(self.bn1[task_id](self.conv1(x)) * _channel(masks[self.conv1_name]))
        y = self.bn2[task_id](self.conv2(y)) * _channel(masks[self.conv2_name])
        if self.has_downsample:
            shortcut = self.bn_downsample[task_id](self.downsample(x)) * _channel(masks[self.downsample_name])
        else:
            shortcut = x
        return torch.relu(y + shortcut)

    def per_task_norms(self) -> list[nn.ModuleList]:
        return [self.bn1, self.bn2] + ([self.bn_downsample] if self.has_downsample else [])


def _channel(mask: Tensor) -> Tensor:
    return mask.view(1, -1, 1, 1)


class HATMaskResNet18(HATMaskBackbone):
    """ResNet-18 for small images (3x3 stem, stride 1, no max-pool, like ``ResNet18``), HAT-masked.

    Every conv (stem, both convs of each block, the 1x1 downsample convs) is masked per output
    channel, after its batch norm and before the ReLU (see ``hat_mask``). Batch norm is per task
    (``num_tasks`` of them per layer), so no task changes another task's statistics. Layer names:
    ``conv1`` (stem), ``layer{i}_{j}_conv1``, ``layer{i}_{j}_conv2``, ``layer{i}_0_downsample``.

    Args:
        in_channels: image channels.
        num_tasks: tasks to make room for (embeddings, stored masks, batch norms).
        base_width: channels of the first stage (64 is ResNet-18; smaller for quick runs);
            stages have ``base_width * (1, 2, 4, 8)`` channels, ``output_dim = 8 * base_width``.
    """

    @classmethod
    def config_problems(cls, options: Mapping[str, Any], *, num_tasks: int | None = None) -> list[str]:
        """Room for every task (``HATMaskBackbone``), the input channels and the stage widths."""
        problems = super().config_problems(options, num_tasks=num_tasks) + channel_problems(options)
        width = options.get("base_width", 64)
        if not (is_int(width) and width >= 1):
            problems.append(f"backbone.base_width={width!r}: must be an integer >= 1 (64 is ResNet-18)")
        return problems

    def __init__(self, in_channels: int = 3, *, num_tasks: int, base_width: int = 64) -> None:
        options = {"in_channels": in_channels, "num_tasks": num_tasks, "base_width": base_width}
        raise_if_problems(type(self).config_problems(options))
        super().__init__(output_dim=8 * base_width, num_tasks=num_tasks)
        self.conv1 = nn.Conv2d(in_channels, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = per_task_batch_norm(base_width, num_tasks)
        self.register_masked_layer("conv1", self.conv1)
        blocks: list[HATMaskBasicBlock] = []
        in_width = base_width
        for stage, (multiplier, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            width = base_width * multiplier
            for index in range(2):
                block = HATMaskBasicBlock(
                    f"layer{stage}_{index}", in_width, width, stride if index == 0 else 1, num_tasks
                )
                blocks.append(block)
                in_width = width
        self.blocks = nn.ModuleList(blocks)
        for block in self.blocks:
            self.register_masked_layer(block.conv1_name, block.conv1)
            self.register_masked_layer(block.conv2_name, block.conv2)
            if block.has_downsample:
                self.register_masked_layer(block.downsample_name, block.downsample)
        self._initialise_weights()

    def _initialise_weights(self) -> None:
        # torchvision's ResNet initialisation, so the masked and the plain ResNet start alike.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def masked_forward(self, x: Tensor, masks: dict[str, Tensor], task_id: int) -> Tensor:
        h = torch.relu(self.bn1[task_id](self.conv1(x)) * _channel(masks["conv1"]))
        for block in self.blocks:
            h = block(h, masks, task_id)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)

    def input_unit_masks(self, unit_masks: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """A block's input channel is live if its previous block's branch *or* shortcut is.

        The residual sum ``relu(branch + shortcut)`` is zero in a channel only when both are, so
        the mask of a block's output is ``max(a_conv2, a_shortcut)``; with an identity shortcut
        ``a_shortcut`` is the block input's own mask. This makes Eq. 2 exact for residual nets.
        """
        inputs: dict[str, Tensor | None] = {"conv1": None}
        block_input = unit_masks["conv1"]
        for block in self.blocks:
            inputs[block.conv1_name] = block_input
            inputs[block.conv2_name] = unit_masks[block.conv1_name]
            if block.has_downsample:
                inputs[block.downsample_name] = block_input
                shortcut = unit_masks[block.downsample_name]
            else:
                shortcut = block_input
            block_input = torch.maximum(unit_masks[block.conv2_name], shortcut)
        return inputs

    def task_specific_modules(self, task_id: int) -> list[nn.Module]:
        self._check_task(task_id)
        norms = [self.bn1] + [norm for block in self.blocks for norm in block.per_task_norms()]
        return [per_task[task_id] for per_task in norms]
