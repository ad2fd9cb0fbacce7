"""Test accuracy of one task under a given logits function, outside a Trainer.

TAK evaluates models the task loop's test loop does not see: a task's own vector right after it
trains (single-task accuracy) and every merge of the final alpha sweep. The batches are exactly
the test loop's: the benchmark's test split of the task, ``prepare_batch``, the heads' targets; and
so is the count (``clcore.metrics.top1_accuracy``, the test loop's ``TaskAccuracy``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.tensor_loader import TensorBatchLoader
from clcore.metrics.task_accuracy import top1_accuracy


@torch.no_grad()
def task_accuracy(
    benchmark: CLBenchmark,
    task_id: int,
    logits_fn: Callable[[Tensor, int], Tensor],
    targets_fn: Callable[[Tensor, int], Tensor],
    device: torch.device,
) -> float:
    """Fraction of task ``task_id``'s evaluation examples (``benchmark.eval_split``: test, or val)
    whose argmax of ``logits_fn(x, task_id)`` is the target."""
    split = benchmark.task_split(benchmark.eval_split, task_id)
    if len(split.labels) == 0:
        raise ValueError(f"task {task_id + 1} has no test examples")
    loader = TensorBatchLoader(split.images, split.labels, task_id, batch_size=benchmark.eval_batch_size)

    def logits_and_targets():
        for images, labels, task in loader:
            x = benchmark.prepare_batch(images.to(device), task)
            yield logits_fn(x, task), targets_fn(labels.to(device), task)

    return top1_accuracy(logits_and_targets())
