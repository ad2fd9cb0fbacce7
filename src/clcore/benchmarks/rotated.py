"""Rotated benchmarks: every task is the whole base data set rotated by a fixed angle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from clcore.benchmarks.base import CLBenchmark


def rotate(pixels: Tensor, angle_degrees: float) -> Tensor:
    """``pixels`` (``[..., H, W]``, in [0, 1]) rotated counter-clockwise by ``angle_degrees`` about the centre.

    torchvision's batched tensor rotation, bilinear, same size; the corners it uncovers are 0,
    i.e. background in [0, 1] pixel space (callers rotate before normalising). Shared by
    ``RotatedBenchmark`` and ``clta``'s rotated tasks.
    """
    return TF.rotate(pixels, float(angle_degrees), interpolation=TF.InterpolationMode.BILINEAR)


class RotatedBenchmark(CLBenchmark):
    """Rotated MNIST (Lopez-Paz & Ranzato 2017, GEM Sec. 5): task t rotates by ``angles[t]``.

    By default the angles are evenly spaced in ``[0, max_angle)``: task t -> t * max_angle / T.
    The rotation is torchvision's batched tensor rotation (bilinear), run on the batch's device.
    """

    transform_depends_on_task = True

    def __init__(
        self,
        source: str,
        num_tasks: int,
        max_angle: float = 180.0,
        angles: list[float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(source, num_tasks, options=dict(angles=angles), **kwargs)
        self.angles = (
            [float(a) for a in angles]
            if angles is not None
            else [t * max_angle / num_tasks for t in range(num_tasks)]
        )

    @classmethod
    def config_problems(cls, options: Mapping[str, Any]) -> list[str]:
        """The benchmark's rules, and one angle per task when the angles are given."""
        problems = super().config_problems(options)
        angles, num_tasks = options.get("angles"), options.get("num_tasks")
        listed = isinstance(angles, Sequence) and not isinstance(angles, str)
        if angles is not None and (not listed or len(angles) != num_tasks):
            given = f"has {len(angles)} entries" if listed else f"is {angles!r}"
            problems.append(
                f"benchmark.angles {given} but benchmark.num_tasks={num_tasks}: give one angle per task, "
                f"or drop benchmark.angles for angles evenly spaced in [0, max_angle)"
            )
        return problems

    def classes_of(self, task_id: int) -> list[int]:
        return list(range(self.load().num_classes))

    def task_transform(self, x: Tensor, task_id: int) -> Tensor:
        angle = self.angles[task_id]
        if angle == 0.0:
            return x
        # Rotate in [0, 1] pixel space so the corners that appear are background (0), not -mean/std.
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        rotated = rotate(x * std + mean, angle)
        return (rotated - mean) / std
