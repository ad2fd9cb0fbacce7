"""Fully connected backbone for flattened images (the Permuted-MNIST standard)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from clcore.backbones.base import CLBackbone
from clcore.config_rules import is_int, is_number, raise_if_problems


def layer_problems(options: Mapping[str, Any]) -> list[str]:
    """The sizes of a fully connected backbone (``MLP``, ``HATMaskMLP``): each layer needs a unit.

    ``input_dim`` absent or null: it follows the benchmark. Absent options take their defaults.
    """
    problems = []
    for key in ("input_dim", "output_dim"):
        value = options.get(key)
        if value is not None and not (is_int(value) and value >= 1):
            problems.append(f"backbone.{key}={value!r}: must be an integer >= 1")
    hidden_dims = options.get("hidden_dims", ())
    listed = isinstance(hidden_dims, Sequence) and not isinstance(hidden_dims, str)
    if not (listed and all(is_int(width) and width >= 1 for width in hidden_dims)):
        problems.append(
            f"backbone.hidden_dims={hidden_dims!r}: each hidden layer needs an integer width >= 1 "
            "(e.g. backbone.hidden_dims=[256,100]; [] for none)"
        )
    for key in ("dropout", "input_dropout"):
        rate = options.get(key, 0.0)
        if not (is_number(rate) and math.isfinite(rate) and 0 <= rate < 1):
            problems.append(f"backbone.{key}={rate!r}: must be a probability in [0, 1) (0: no dropout)")
    return problems


class MLP(CLBackbone):
    """``input_dim -> hidden_dims[0] -> ... -> output_dim`` with ReLU after every layer.

    The last hidden layer is the feature layer: its activations go to the heads
    (e.g. 784-256-100 with 64-d features, the AdaHAT / CLArena PMNIST setting).
    """

    @classmethod
    def config_problems(cls, options: Mapping[str, Any], *, num_tasks: int | None = None) -> list[str]:
        return super().config_problems(options, num_tasks=num_tasks) + layer_problems(options)

    @classmethod
    def variant_for(cls, required: type, options: Mapping[str, Any]) -> tuple[type, dict] | None:
        """HAT's mask backbone: ``HATMaskMLP`` with the same layers and dropout (not with batch
        norm, which would need a statistic per task: none then)."""
        from clcore.backbones.hat_mlp import HATMaskMLP

        if not issubclass(HATMaskMLP, required) or options.get("batch_norm"):
            return None
        return HATMaskMLP, {key: value for key, value in options.items() if key != "batch_norm"}

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (256, 100),
        output_dim: int = 64,
        dropout: float = 0.0,
        batch_norm: bool = False,
        input_dropout: float = 0.0,
    ) -> None:
        options = dict(
            input_dim=input_dim,
            hidden_dims=hidden_dims,
            output_dim=output_dim,
            dropout=dropout,
            input_dropout=input_dropout,
        )
        raise_if_problems(type(self).config_problems(options))
        super().__init__(output_dim)
        dims = [input_dim, *hidden_dims, output_dim]
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:  # on the pixels (HAT's reference MLP: 0.2)
            layers.append(nn.Dropout(input_dropout))
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(fan_in, fan_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(fan_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        self.input_dim = input_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
