"""Rotated benchmarks: every task is the whole base data set rotated by a fixed angle."""

from __future__ import annotations

from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from clcore.benchmarks.base import CLBenchmark


class RotatedBenchmark(CLBenchmark):
    """Rotated MNIST (Lopez-Paz & Ranzato 2017, GEM Sec. 5): task t rotates by ``angles[t]``.

    By default the angles are evenly spaced in ``[0, max_angle)``: task t -> t * max_angle / T.
    The rotation is torchvision's batched tensor rotation (bilinear), run on the batch's device.
    """

    def __init__(
        self,
        source: str,
        num_tasks: int,
        max_angle: float = 180.0,
        angles: list[float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(source, num_tasks, **kwargs)
        if angles is not None and len(angles) != num_tasks:
            raise ValueError(
                f"benchmark.angles has {len(angles)} entries but benchmark.num_tasks={num_tasks}"
            )
        self.angles = (
            [float(a) for a in angles]
            if angles is not None
            else [t * max_angle / num_tasks for t in range(num_tasks)]
        )

    def classes_of(self, task_id: int) -> list[int]:
        return list(range(self.load().num_classes))

    def task_transform(self, x: Tensor, task_id: int) -> Tensor:
        angle = self.angles[task_id]
        if angle == 0.0:
            return x
        # Rotate in [0, 1] pixel space so the corners that appear are background (0), not -mean/std.
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        rotated = TF.rotate(x * std + mean, angle, interpolation=TF.InterpolationMode.BILINEAR)
        return (rotated - mean) / std
