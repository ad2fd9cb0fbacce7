"""Domain-incremental head: one head shared by all tasks (same label space every task)."""

from __future__ import annotations

from torch import Tensor, nn

from clcore.heads.base import CLHeads


class HeadDIL(CLHeads):
    """``logits = head(features)`` for every task; all tasks must have the same number of classes."""

    paradigm = "dil"

    def __init__(self, input_dim: int) -> None:
        super().__init__(input_dim)
        self.head: nn.Linear | None = None

    def _grow(self, task_id: int, num_classes: int) -> None:
        if self.head is None:
            self.head = nn.Linear(self.input_dim, num_classes)
        elif self.head.out_features != num_classes:
            raise ValueError(
                f"DIL needs the same classes in every task: task 1 has {self.head.out_features}, "
                f"task {task_id + 1} has {num_classes}. Use paradigm=til or paradigm=cil for this benchmark."
            )

    def forward(self, features: Tensor, task_id: int | None = None) -> Tensor:
        if self.head is None:
            raise RuntimeError("HeadDIL has no classes yet: call setup_task first")
        return self.head(features)
