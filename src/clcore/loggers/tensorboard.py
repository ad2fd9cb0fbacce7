"""Lightning's TensorBoard logger, drawing each quantity of a task sequence as one chart with a curve per task.

TensorBoard overlays curves of the same tag from different runs (folders), never different tags
of one run: with names like ``train/loss/task_3`` every task had its own chart, and the accuracy
matrix was T(T+1)/2 charts of one point each. This logger writes a metric named by a task
(``clcore.metrics.names``) under its quantity (``train/loss``) into a run folder of that task,
``<log_dir>/task_3/``; TensorBoard then shows one ``train/loss`` chart with a curve per task, each
task in the same colour in every chart, along the sequence-wide step. Metrics of no task
(``test/average_accuracy``, ``epoch``) and the hyperparameters stay in ``<log_dir>`` itself.

A resumed run continues after the step of its last checkpoint: every writer is opened with
``purge_step`` one past it, so TensorBoard hides what the interrupted task had logged after it.
Writers stay open from task to task (``finalize`` only flushes): one event file per writer and
process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from clcore.metrics.names import split_task_metric


class SequenceTensorBoardLogger(TensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` with a run folder per task (``task_<t>/``)
    for the metrics named by a task, and ``purge_step`` on resume (``continue_after``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._task_writers: dict[int, object] = {}

    def continue_after(self, last_step: int | None) -> None:
        """Before the first write: a run resumed after ``last_step`` hides later events (None: a fresh run)."""
        if last_step is not None:
            # SummaryWriter's own resume mechanism; the main writer is built from these keyword arguments
            self._kwargs["purge_step"] = last_step + 1

    def _task_writer(self, task: int):
        writer = self._task_writers.get(task)
        if writer is None:
            writer_class = type(self.experiment)  # torch's SummaryWriter, or tensorboardX's
            writer = writer_class(log_dir=os.path.join(self.log_dir, f"task_{task}"), **self._kwargs)
            self._task_writers[task] = writer
        return writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        rest = {}
        for name, value in metrics.items():
            named = split_task_metric(name)
            if named is None:
                rest[name] = value
                continue
            quantity, task = named
            self._task_writer(task).add_scalar(
                quantity, value.item() if isinstance(value, Tensor) else value, step
            )
        if rest:
            super().log_metrics(rest, step)

    @rank_zero_only
    def save(self) -> None:
        super().save()
        for writer in self._task_writers.values():
            writer.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush, but keep the writers open for the next task's Trainer.

        Lightning closes the writer at the end of every ``fit`` and ``test``, and the next write
        opens a new event file. TensorBoard reads a folder's files in name order, and the names end
        in a counter compared as text (``.10`` before ``.9``), so files opened within one second could
        be read out of order, and a resumed run's ``purge_step`` would then hide points written
        after it. One file per writer and process avoids both. (The writing threads are daemons:
        nothing waits for them at exit, and everything was flushed here.)
        """
        self.save()
