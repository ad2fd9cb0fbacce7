"""A rich progress bar that says which task of how many is running."""

from __future__ import annotations

from typing import Any

from lightning import Callback
from lightning.pytorch.callbacks import RichProgressBar


class TaskProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar`` with every description prefixed by ``Task 3/10``.

    With one Trainer per task, Lightning's own bar restarts at "Epoch 0" for every task and
    never says where in the sequence the run is. The task comes from the algorithm
    (``task_id``, ``num_tasks``); the task being tested comes from the batch, because one test
    pass covers every task seen so far. Epochs are shown 1-based like tasks.

    One instance serves all the per-task Trainers: Lightning's rich bar rebuilds its display
    whenever a stopped one is needed again.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave, **kwargs)
        self._testing_task: int | None = None

    def _task_prefix(self) -> str:
        module = self.trainer.lightning_module if self._trainer is not None else None
        task_id, num_tasks = getattr(module, "task_id", None), getattr(module, "num_tasks", None)
        if task_id is None or num_tasks is None:
            return ""
        return f"Task {task_id + 1}/{num_tasks} · "

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"{self._task_prefix()}epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        # same width as the validation bar, as Lightning pads it, so the bars do not flicker
        return f"{description:{len(self.validation_description)}}"

    @property
    def validation_description(self) -> str:
        return f"{self._task_prefix()}validation"

    @property
    def test_description(self) -> str:
        tested = f"testing task {self._testing_task + 1}" if self._testing_task is not None else "testing"
        return f"{self._task_prefix()}{tested}"

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # batches are (x, local_labels, task_id): the bar of each test loader names its task
        self._testing_task = int(batch[2]) if isinstance(batch, (tuple, list)) and len(batch) == 3 else None
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)


def task_progress_bar(enabled: bool = True, **kwargs: Any) -> Callback:
    """``TaskProgressBar(**kwargs)``, or a callback that does nothing when ``enabled`` is false.

    Lightning refuses a progress-bar callback together with ``enable_progress_bar=False``; the
    callbacks config passes ``enabled: ${trainer.enable_progress_bar}`` so that flag alone
    still switches the bar off (quiet test runs, log files on a cluster).
    """
    return TaskProgressBar(**kwargs) if enabled else Callback()
