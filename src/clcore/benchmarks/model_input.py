"""The input convention of a backbone that is not the data set's own: size, channels, mean and std.

A pre-trained CLIP ViT expects 224 x 224 RGB images normalised with CLIP's mean and std
(Radford et al., ICML 2021), while a benchmark normalises its images with the data set's own
statistics at their native size. ``ModelInput`` converts a batch the benchmark has already
prepared (normalised, task-transformed) into that convention, as tensor ops on the batch's device:

    pixels = x * data_std + data_mean             back to [0, 1] pixel values
    pixels = resize(pixels, size), clamped         bicubic with antialiasing, as CLIP's PIL resize
    pixels = repeat grey channels to ``channels``  (MNIST / digits -> RGB)
    x'     = (pixels - mean) / std                 the model's normalisation

Every step is optional; with nothing set the batch passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ModelInput:
    """Resize to ``size`` x ``size``, expand to ``channels``, normalise with ``mean`` / ``std``.

    ``mean`` / ``std`` default to the data set's statistics; give one value per output channel.
    """

    size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"benchmark.model_input.size must be a positive integer, got {self.size!r}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"benchmark.model_input.channels must be 1 or 3, got {self.channels!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("benchmark.model_input needs both mean and std, or neither")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None:
                object.__setattr__(self, name, tuple(float(v) for v in values))
                if self.channels is not None and len(getattr(self, name)) not in (1, self.channels):
                    raise ValueError(
                        f"benchmark.model_input.{name} has {len(values)} values for {self.channels} channels"
                    )
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"benchmark.model_input.std must be positive, got {self.std}")

    @classmethod
    def from_config(cls, config: dict | None) -> ModelInput | None:
        if config is None:
            return None
        unknown = set(config) - {"size", "channels", "mean", "std"}
        if unknown:
            raise ValueError(
                f"benchmark.model_input has unknown key(s) {sorted(unknown)}: use size, channels, mean, std"
            )
        return cls(**{key: _plain(value) for key, value in config.items()})

    def shape(self, data_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The ``(C, H, W)`` the model receives for data of shape ``data_shape``."""
        channels, height, width = data_shape
        if self.size is not None:
            height = width = self.size
        return (self.channels or channels, height, width)

    def __call__(self, x: Tensor, data_mean: Tensor, data_std: Tensor) -> Tensor:
        data_mean, data_std = data_mean.to(x.device), data_std.to(x.device)
        pixels = x * data_std + data_mean
        if self.size is not None and tuple(pixels.shape[-2:]) != (self.size, self.size):
            pixels = F.interpolate(
                pixels, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
            )
            pixels = pixels.clamp(0.0, 1.0)  # bicubic overshoots; PIL's uint8 resize clips too
        if self.channels is not None and pixels.shape[1] != self.channels:
            if pixels.shape[1] != 1:
                raise ValueError(
                    f"cannot turn {pixels.shape[1]}-channel images into {self.channels} channels"
                )
            pixels = pixels.expand(-1, self.channels, -1, -1)
        if self.mean is None:
            return (pixels - data_mean) / data_std
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        return (pixels - mean) / std


def _plain(value):
    # Hydra passes ListConfig; the dataclass wants plain numbers and tuples.
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
