"""Split benchmarks: the classes of the base data set divided into disjoint tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.sources import ImageData
from clcore.config_rules import is_int


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
        options = dict(classes_per_task=classes_per_task, class_order=class_order)
        super().__init__(source, num_tasks, options=options, **kwargs)
        self.classes_per_task = classes_per_task
        self.shuffle_classes = shuffle_classes
        self._given_order = list(class_order) if class_order is not None else None
        self.class_order: list[int] | None = None

    @classmethod
    def config_problems(cls, options: Mapping[str, Any]) -> list[str]:
        """The benchmark's rules, and enough classes in the source for the split (its registry entry)."""
        problems = super().config_problems(options)
        per_task = options.get("classes_per_task", 2)
        if not is_int(per_task) or per_task < 1:
            return problems + [f"benchmark.classes_per_task={per_task!r}: must be an integer >= 1"]
        entry, num_tasks = cls.source_entry(options), options.get("num_tasks")
        if entry is None or not is_int(num_tasks) or num_tasks < 1:
            return problems  # reported by CLBenchmark's rules
        available, needed = entry.num_classes, num_tasks * per_task
        if needed > available:
            fix = (
                f"benchmark.num_tasks={available // per_task}"
                if per_task <= available
                else f"benchmark.classes_per_task={max(1, available // num_tasks)}"
            )
            problems.append(
                f"benchmark.num_tasks={num_tasks} x benchmark.classes_per_task={per_task} = {needed} "
                f"classes, but {entry.name} has {available}: lower one of them (e.g. {fix})"
            )
        order = options.get("class_order")
        if order is not None and not _is_class_order(order, needed, available):
            problems.append(
                f"benchmark.class_order must list at least {needed} distinct classes in 0..{available - 1}, got {order}"
            )
        return problems

    def _on_load(self, data: ImageData) -> None:
        if self._given_order is not None:
            order = self._given_order
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


def _is_class_order(order: Any, needed: int, available: int) -> bool:
    """At least ``needed`` distinct class ids, each in ``0..available-1``."""
    return (
        isinstance(order, Sequence)
        and not isinstance(order, str)
        and all(is_int(c) and 0 <= c < available for c in order)
        and len(set(order)) == len(order) >= needed
    )
