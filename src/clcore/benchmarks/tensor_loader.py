"""Batches straight from in-memory tensors: no per-sample ``__getitem__``, no collate."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from clcore.benchmarks.streamed import StreamedImages


class TensorBatchLoader:
    """Iterates ``(images[idx], labels[idx], task_id)`` over index chunks of a (shuffled) order.

    ``task_id`` is one int for a loader over one task, or a tensor with one task id per sample
    (a loader over several tasks, ``CLBenchmark.train_tasks``), then sliced like the labels.

    A torch ``DataLoader`` over a ``TensorDataset`` indexes one sample at a time and collates in
    Python; for data that already sits in memory that is most of the step time. Slicing whole
    batches is one tensor op. Lightning accepts any sized iterable as a dataloader.

    Under data parallelism each process takes every ``world_size``-th sample of the same
    shuffled order (the ``DistributedSampler`` rule), so the shards are disjoint and cover the data.

    ``images`` may be ``StreamedImages`` (a data set larger than the memory budget,
    ``clcore.benchmarks.streamed``): the index chunks and their order are the same, and each
    chunk's images are read from disk by ``num_workers`` DataLoader workers (None: as many as
    ``streamed.default_workers()``; 0: this process). The batches are identical to those of the
    same data held in memory.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        task_id: int | Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if isinstance(task_id, Tensor) and task_id.shape != labels.shape:
            raise ValueError(
                f"per-sample task ids {tuple(task_id.shape)} do not match labels {tuple(labels.shape)}"
            )
        self.images, self.labels, self.task_id = images, labels, task_id
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.generator = torch.Generator().manual_seed(seed)

    def _num_samples(self) -> int:
        return len(range(self.rank, len(self.labels), self.world_size))

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _task_ids(self, index: slice | Tensor) -> int | Tensor:
        return self.task_id[index] if isinstance(self.task_id, Tensor) else self.task_id

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int | Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        if self.world_size > 1:
            order = (order if order is not None else torch.arange(n))[self.rank :: self.world_size]
        if isinstance(self.images, StreamedImages):
            yield from self._streamed(order)
            return
        if order is None:  # contiguous slices are views: no copy at all
            for start in range(0, len(self) * self.batch_size, self.batch_size):
                rows = slice(start, start + self.batch_size)
                yield self.images[rows], self.labels[rows], self._task_ids(rows)
            return
        order = order.to(self.images.device)
        for chunk in order[: len(self) * self.batch_size].split(self.batch_size):
            yield self.images[chunk], self.labels[chunk], self._task_ids(chunk)

    def _streamed(self, order: Tensor | None) -> Iterator[tuple[Tensor, Tensor, int | Tensor]]:
        """The batches of the in-memory path, each chunk's images read from disk by the workers."""
        if order is None:
            stops = range(0, len(self) * self.batch_size, self.batch_size)
            chunks = [torch.arange(start, min(start + self.batch_size, len(self.labels))) for start in stops]
        else:
            chunks = list(order[: len(self) * self.batch_size].split(self.batch_size))
        images = self.images.batches(chunks, self.num_workers)
        for chunk, batch in zip(chunks, images, strict=True):
            chunk = chunk.to(self.labels.device)
            yield batch, self.labels[chunk], self._task_ids(chunk)
