"""Continual-learning metrics: top-1 accuracy (torchmetrics), the accuracy matrix, AA, BWT, FWT, forgetting."""

from clcore.metrics.continual import average_accuracy, backward_transfer, forgetting, forward_transfer
from clcore.metrics.results import ContinualResults
from clcore.metrics.task_accuracy import TaskAccuracy, top1_accuracy

__all__ = [
    "ContinualResults",
    "TaskAccuracy",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "top1_accuracy",
]
