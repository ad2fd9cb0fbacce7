"""Test accuracy of one task under a given logits function, outside a Trainer.

TAK evaluates models the pipeline's test loop does not see: a task's own vector right after it
trains (single-task accuracy) and every merge of the final alpha sweep. The batches are exactly
the test loop's: the benchmark's test split of the task, ``prepare_batch``, the heads' targets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.tensor_loader import TensorBatchLoader


@torch.no_grad()
def task_accuracy(
    benchmark: CLBenchmark,
    task_id: int,
    logits_fn: Callable[[Tensor, int], Tensor],
    targets_fn: Callable[[Tensor, int], Tensor],
    device: torch.device,
) -> float:
    """Fraction of task ``task_id``'s test examples whose argmax of ``logits_fn(x, task_id)`` is the target."""
    split = benchmark.task_split("test", task_id)
    loader = TensorBatchLoader(split.images, split.labels, task_id, batch_size=benchmark.eval_batch_size)
    correct, total = 0, 0
    for images, labels, task in loader:
        x = benchmark.prepare_batch(images.to(device), task)
        predictions = logits_fn(x, task).argmax(dim=-1)
        correct += int((predictions == targets_fn(labels.to(device), task)).sum())
        total += labels.shape[0]
    if total == 0:
        raise ValueError(f"task {task_id + 1} has no test examples")
    return correct / total
