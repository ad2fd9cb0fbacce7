"""Top-1 accuracy, counted one way for all of clcore: a torchmetrics ``Metric`` per task (correct under
DDP) and ``top1_accuracy`` over batches for evaluations outside a Trainer (TAK's, ``clta``'s).

Every count is integer sums of correct predictions and of samples, divided once in float64: the
fraction is the correctly rounded ``correct / seen``, whatever the batching.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def top1_accuracy(batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Fraction of samples whose ``logits.argmax(-1)`` is the target, over ``(logits, targets)`` batches.

    Counted by ``TaskAccuracy`` (one task) on the batches' device. The count is this process's own:
    its callers evaluate whole splits in every process, so there is nothing to reduce across them.
    """
    metric = None
    for logits, targets in batches:
        if metric is None:
            metric = TaskAccuracy(num_tasks=1, sync_on_compute=False).to(targets.device)
        metric.update(logits.argmax(dim=-1), targets, task_id=0)
    if metric is None or int(metric.total[0]) == 0:
        raise ValueError("top-1 accuracy needs at least one sample")
    return float(metric.compute())  # one element (torchmetrics squeezes a one-task result to 0-d)
