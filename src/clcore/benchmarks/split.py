"""Split benchmarks: the classes of the base data set divided into disjoint tasks."""

from __future__ import annotations

import torch

from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.sources import ImageData


class SplitBenchmark(CLBenchmark):
    """Split MNIST / CIFAR-10 / CIFAR-100 / Digits (Zenke et al. 2017; Rebuffi et al. 2017).

    Task t has classes ``class_order[t*k : (t+1)*k]`` with k = ``classes_per_task``. The class
    order is the natural one, a given list, or (``shuffle_classes=true``) a permutation drawn
    from ``seed``. Labels are local (0..k-1); the paradigm's head maps them (CIL: global).
    """

    def __init__(
        self,
        source: str,
        num_tasks: int,
        classes_per_task: int = 2,
        shuffle_classes: bool = False,
        class_order: list[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(source, num_tasks, **kwargs)
        if classes_per_task < 1:
            raise ValueError(f"benchmark.classes_per_task must be >= 1, got {classes_per_task}")
        self.classes_per_task = classes_per_task
        self.shuffle_classes = shuffle_classes
        self._given_order = list(class_order) if class_order is not None else None
        self.class_order: list[int] | None = None

    def _check(self, data: ImageData) -> None:
        needed = self.num_tasks * self.classes_per_task
        if needed > data.num_classes:
            raise ValueError(
                f"benchmark.num_tasks={self.num_tasks} x benchmark.classes_per_task={self.classes_per_task} "
                f"= {needed} classes, but {data.name} has {data.num_classes}"
            )
        if self._given_order is not None:
            order = self._given_order
            if (
                sorted(order) != sorted(set(order))
                or not all(0 <= c < data.num_classes for c in order)
                or len(order) < needed
            ):
                raise ValueError(
                    f"benchmark.class_order must list at least {needed} distinct classes in 0..{data.num_classes - 1}, got {order}"
                )
        elif self.shuffle_classes:
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(data.num_classes, generator=generator).tolist()
        else:
            order = list(range(data.num_classes))
        self.class_order = order

    def classes_of(self, task_id: int) -> list[int]:
        self.load()
        k = self.classes_per_task
        return self.class_order[task_id * k : (task_id + 1) * k]
