"""Fully connected backbone for flattened images (the Permuted-MNIST standard)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from clcore.backbones.base import CLBackbone


class MLP(CLBackbone):
    """``input_dim -> hidden_dims[0] -> ... -> output_dim`` with ReLU after every layer.

    The last hidden layer is the feature layer: its activations go to the heads
    (e.g. 784-256-100 with 64-d features, the AdaHAT / CLArena PMNIST setting).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (256, 100),
        output_dim: int = 64,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(output_dim)
        dims = [input_dim, *hidden_dims, output_dim]
        layers: list[nn.Module] = [nn.Flatten()]
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
