"""Fully connected HAT backbone: the MLP with a task mask on every layer (Serra et al. 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clcore.backbones.hat_mask import HATMaskBackbone
from clcore.backbones.mlp import layer_problems
from clcore.config_rules import raise_if_problems


class HATMaskMLP(HATMaskBackbone):
    """``input_dim -> hidden_dims[0] -> ... -> output_dim``, every Linear masked, ReLU after each.

    Mirrors ``MLP`` (same layers, the last one is the feature layer and is masked too), with
    ``h_l = dropout(relu(a_l^t * fc_l(h_{l-1})))`` (mask before the activation, see
    ``hat_mask``). Layer names are ``fc1``, ``fc2``, ...; ``fc1`` reads the input, which has no
    mask. E.g. 784-256-100-64, the AdaHAT / CLArena PMNIST setting, or 784-2000-2000 (HAT paper).

    Args:
        input_dim: flattened input size.
        hidden_dims: hidden layer widths.
        output_dim: feature size (width of the last, feature, layer).
        dropout: dropout after each activation (HAT's reference MLP: 0.5).
        input_dropout: dropout on the input (HAT's reference MLP: 0.2).
        num_tasks: tasks to make room for (task embeddings and stored masks).
    """

    @classmethod
    def config_problems(cls, options: Mapping[str, Any], *, num_tasks: int | None = None) -> list[str]:
        """Room for every task (``HATMaskBackbone``) and the sizes of an ``MLP``."""
        return super().config_problems(options, num_tasks=num_tasks) + layer_problems(options)

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (256, 100),
        output_dim: int = 64,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        *,
        num_tasks: int,
    ) -> None:
        options = dict(
            input_dim=input_dim,
            hidden_dims=hidden_dims,
            output_dim=output_dim,
            dropout=dropout,
            input_dropout=input_dropout,
        )
        raise_if_problems(type(self).config_problems({**options, "num_tasks": num_tasks}))
        super().__init__(output_dim, num_tasks)
        self.input_dim = input_dim
        dims = [input_dim, *hidden_dims, output_dim]
        self.fcs = nn.ModuleList(nn.Linear(fan_in, fan_out) for fan_in, fan_out in zip(dims[:-1], dims[1:]))
        for index, layer in enumerate(self.fcs):
            self.register_masked_layer(f"fc{index + 1}", layer)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()

    def masked_forward(self, x: Tensor, masks: dict[str, Tensor], task_id: int) -> Tensor:
        h = self.input_dropout(torch.flatten(x, 1))
        for name, layer in zip(self.masked_layer_names, self.fcs):
            h = self.dropout(torch.relu(layer(h) * masks[name]))
        return h

    def input_unit_masks(self, unit_masks: dict[str, Tensor]) -> dict[str, Tensor | None]:
        names = self.masked_layer_names
        return {
            name: (unit_masks[names[index - 1]] if index > 0 else None) for index, name in enumerate(names)
        }
