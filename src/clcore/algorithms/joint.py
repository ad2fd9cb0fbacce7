"""Joint: one model trained on the union of the tasks' data, the upper-bound reference."""

from __future__ import annotations

from torch import Tensor

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.algorithms.random_network import train_nothing
from clcore.backbones.base import CLBackbone
from clcore.benchmarks.base import CLBenchmark
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric


class Joint(CLAlgorithm):
    """Multi-task training on every task's data together: no forgetting by construction.

    Two readings of "joint" in the literature, both evaluated with the same accuracy matrix:

    - ``all_at_once=false`` (default), the upper bound *per step*: at task ``t`` the model trains
      on the union of tasks ``1..t`` (the "Cumulative" strategy of Avalanche, Lomonaco et al. 2021,
      continuing from the model of step ``t - 1``, with a fresh optimizer as every task). Row ``t``
      is what a learner that could store all data seen so far would reach.
    - ``all_at_once=true``, the "Joint" baseline of van de Ven, Tuytelaars & Tolias 2022 (Nature
      Machine Intelligence, Methods): one training run on all tasks, at task 1 (every head is
      grown then); later tasks train nothing. Each row ``i`` is that one model tested on tasks
      ``1..i``, so every column is constant, BWT is 0 and the last row is the reported number.
      Row 1 has used later tasks' data: it is a reference, not a continual learner.

    The data: before ``fit``, ``setup("fit")`` sets the benchmark's ``train_tasks``, and training
    and validation batches then mix tasks, with a per-sample task-id tensor (``CLBenchmark``).
    The backbone runs once on the whole batch (batch norm sees the mixed batch); the loss is the
    mean over the batch of each sample's cross-entropy under its own task's head and targets
    (TIL: the task's head; CIL: the grown head, global targets; DIL: the shared head). Testing is
    per task as for every algorithm.
    """

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules (``CLAlgorithm``) and Joint's one option."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        if not isinstance(options.get("all_at_once", False), bool):
            problems.append(f"algorithm.all_at_once={options['all_at_once']!r}: must be true or false")
        return problems

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        all_at_once: bool = False,
    ) -> None:
        options = dict(all_at_once=all_at_once)
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        self.all_at_once = all_at_once

    def setup(self, stage: str) -> None:
        # Runs before the optimizer is built and before any loader is requested.
        if stage != "fit":
            return
        benchmark = self.trainer.datamodule
        if not isinstance(benchmark, CLBenchmark):
            raise TypeError(
                "Joint trains on a CLBenchmark's tasks: call trainer.fit(model, datamodule=benchmark)"
            )
        if not self.all_at_once:
            benchmark.train_tasks = list(range(self.task_id + 1))
        elif self.task_id == 0:
            for task_id in range(1, benchmark.num_tasks):  # every head exists before the optimizer
                self.heads.setup_task(task_id, benchmark.num_classes_of(task_id))
            benchmark.train_tasks = list(range(benchmark.num_tasks))
        else:
            train_nothing(self.trainer)

    def per_task_loss(self, features: Tensor, labels: Tensor, task_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(mean loss, accuracy) of a batch mixing tasks: each task's rows under its own head.

        A loop over the tasks present in the batch, not over samples: the mean of per-task mean
        losses weighted by each task's share of the batch is the mean over all samples.
        """
        loss = accuracy = features.new_zeros(())
        for task_id in task_ids.unique().tolist():
            rows = (task_ids == task_id).nonzero().squeeze(1)
            logits = self.heads(features[rows], task_id)
            targets = self.heads.targets(labels[rows], task_id)
            share = len(rows) / len(labels)
            loss = loss + share * self.loss(logits, targets)
            accuracy = accuracy + (logits.argmax(-1) == targets).sum() / len(labels)
        return loss, accuracy

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_ids = batch
        if not isinstance(task_ids, Tensor):  # a one-task loader (e.g. fit with plain dataloaders)
            return super().training_step(batch, batch_idx)
        loss, _ = self.per_task_loss(self.backbone(x), labels, task_ids)
        if self.is_logging_step(batch_idx):
            self.log(
                task_metric("train/loss", self.task_id), loss, on_step=True, on_epoch=False, prog_bar=True
            )
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, labels, task_ids = batch
        if not isinstance(task_ids, Tensor):
            return super().validation_step(batch, batch_idx)
        loss, accuracy = self.per_task_loss(self.backbone(x), labels, task_ids)
        # As CLAlgorithm logs them, under the task being learned (here: the union up to it).
        batch_size = labels.shape[0]
        self.log(task_metric("val/loss", self.task_id), loss, batch_size=batch_size, sync_dist=True)
        self.log(task_metric("val/acc", self.task_id), accuracy, batch_size=batch_size, sync_dist=True)
        self.log("val/loss", loss, batch_size=batch_size, sync_dist=True, logger=False)
        self.log("val/acc", accuracy, batch_size=batch_size, sync_dist=True, prog_bar=True, logger=False)
