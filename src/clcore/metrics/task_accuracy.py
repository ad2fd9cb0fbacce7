"""Per-task test accuracy as a torchmetrics ``Metric`` (correct under DDP)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TaskAccuracy(Metric):
    """Accuracy of each task, accumulated over batches that may come from several tasks.

    States are per-task sums of correct predictions and of samples, so the distributed
    reduction is a plain sum and the result is exact under any sharding.
    """

    full_state_update = False

    def __init__(self, num_tasks: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_tasks = num_tasks
        self.add_state("correct", default=torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, targets: Tensor, task_id: int) -> None:
        self.correct[task_id] += (preds == targets).sum()
        self.total[task_id] += targets.numel()

    def compute(self) -> Tensor:
        """Accuracy per task in [0, 1]; NaN for tasks with no samples in this evaluation."""
        accuracy = self.correct.double() / self.total.double()
        return torch.where(self.total > 0, accuracy, torch.full_like(accuracy, float("nan")))
