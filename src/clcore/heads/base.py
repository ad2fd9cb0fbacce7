"""The head contract: features + task id -> logits, and local labels -> training targets.

Benchmarks always yield *local* labels (the index of a class within its task's class list).
Each paradigm decides what the network must predict from them, so one benchmark config serves
TIL, CIL and DIL alike (GEM, Lopez-Paz & Ranzato 2017; van de Ven et al. 2022, "Three types of
incremental learning").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CLHeads(nn.Module):
    """Maps features to logits for one paradigm. Knows nothing of algorithms."""

    paradigm: str = ""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        if input_dim <= 0:
            raise ValueError(f"heads input_dim must be positive, got {input_dim}")
        self.input_dim = input_dim
        self.classes_per_task: list[int] = []
        self._class_offsets: tuple[tuple, Tensor] | None = None  # (classes per task, device), offsets

    @property
    def num_tasks_seen(self) -> int:
        return len(self.classes_per_task)

    def task_class_offsets(self, device) -> Tensor:
        """``[T + 1]``: the classes of the tasks before each task, $\\sum_{s < t} C_s$, on ``device``.

        Read every step by code that mixes tasks in a batch (replay); built once per task and
        device (the heads grow only at a task's start), not copied from a host list every step.
        """
        key = (tuple(self.classes_per_task), str(device))
        if self._class_offsets is None or self._class_offsets[0] != key:
            offsets = torch.tensor([0, *self.classes_per_task], device=device).cumsum(0)
            self._class_offsets = (key, offsets)
        return self._class_offsets[1]

    def setup_task(self, task_id: int, num_classes: int) -> None:
        """Make room for task ``task_id`` (0-based) with ``num_classes`` classes; idempotent."""
        if num_classes <= 0:
            raise ValueError(f"task {task_id + 1} has no classes")
        if task_id < self.num_tasks_seen:
            if self.classes_per_task[task_id] != num_classes:
                raise ValueError(
                    f"task {task_id + 1} was set up with {self.classes_per_task[task_id]} classes, now {num_classes}"
                )
            return
        if task_id != self.num_tasks_seen:
            raise ValueError(
                f"tasks must be set up in order: expected task {self.num_tasks_seen + 1}, got {task_id + 1}"
            )
        self.classes_per_task.append(num_classes)
        self._grow(task_id, num_classes)

    def _grow(self, task_id: int, num_classes: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, features: Tensor, task_id: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def targets(self, local_labels: Tensor, task_id: int) -> Tensor:
        """Training/test targets in this head's logit space. Default: the local labels."""
        return local_labels

    # Heads grow during a run; to reload a checkpoint the same structure must exist first.
    def get_extra_state(self) -> dict:
        return {"classes_per_task": list(self.classes_per_task)}

    def set_extra_state(self, state: dict) -> None:
        saved = state["classes_per_task"]
        for task_id, num_classes in enumerate(saved):
            self.setup_task(task_id, num_classes)
