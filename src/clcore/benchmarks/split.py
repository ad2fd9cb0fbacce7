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

    Classes that fit in no task (the class count, or the length of ``class_order``, not a
    multiple of k: 3 tasks x 3 classes over 10 digits) are refused, naming them; listing the
    classes to use in ``class_order`` leaves the others out deliberately. A shorter sequence (fewer
    tasks than the classes allow, e.g. 3 of Split MNIST's 5) is the start of the full one and is
    accepted.
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
        options = dict(
            classes_per_task=classes_per_task,
            class_order=class_order,
            shuffle_classes=shuffle_classes,
            seed=kwargs.get("seed", 0),
        )
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
        elif needed <= available:
            problems += _dropped_class_problems(options, entry.name, available, num_tasks, per_task)
        return problems

    def _on_load(self, data: ImageData) -> None:
        self.class_order = class_order(data.num_classes, self._given_order, self.shuffle_classes, self.seed)

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


def class_order(num_classes: int, given: Sequence[int] | None, shuffle: bool, seed: int) -> list[int]:
    """The order tasks take classes in: ``given``, else a permutation drawn from ``seed``
    (``shuffle``), else ``0..num_classes-1``."""
    if given is not None:
        return list(given)
    if shuffle:
        return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return list(range(num_classes))


def _dropped_class_problems(
    options: Mapping[str, Any], source: str, available: int, num_tasks: int, per_task: int
) -> list[str]:
    """Classes that fit in no task of ``per_task`` classes, named (with every class the run leaves out).

    The classes in play are ``class_order`` when given (listing them is how a user leaves the
    others out on purpose), else all of the source's. When their count is not a multiple of
    ``per_task``, the last ones of the order belong to no task, however many tasks run: the
    run would silently never see them. The class order is the one ``_on_load`` draws (the seed
    decides it for ``shuffle_classes``), so the classes named are those the run would drop.
    """
    given, seed = options.get("class_order"), options.get("seed", 0)
    shuffle = bool(options.get("shuffle_classes", False)) and is_int(seed)
    order = class_order(available, given, shuffle, seed if is_int(seed) else 0)
    if len(order) % per_task == 0:
        return []
    dropped = sorted(order[num_tasks * per_task :])
    drawn = " (drawn from the seed)" if shuffle and given is None else ""
    divisor = max(d for d in range(1, per_task + 1) if len(order) % d == 0)
    kept = ",".join(map(str, order[: num_tasks * per_task]))
    counted = (
        f"the {len(order)} classes of benchmark.class_order"
        if given is not None
        else f"its {len(order)} classes"
    )
    return [
        f"benchmark.num_tasks={num_tasks} x benchmark.classes_per_task={per_task} would drop class(es) "
        f"{dropped} of {source}{drawn}: {counted} do not split into tasks of {per_task}. "
        f"Use benchmark.classes_per_task={divisor} with benchmark.num_tasks={len(order) // divisor}, or "
        f"list the classes to use (benchmark.class_order=[{kept}]) to leave the others out deliberately"
    ]
