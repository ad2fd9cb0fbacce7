"""A progress display that says which task of how many is running, and costs nothing to stop."""

from __future__ import annotations

import time
from typing import Any

from lightning import Callback
from lightning.pytorch.callbacks import ProgressBar
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class _SpeedColumn(ProgressColumn):
    """Batches per second, as Lightning's bar shows them."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f}it/s" if task.speed else "", style="progress.data.speed")


class _DrawnByRefreshThread(Progress):
    """rich's ``Progress`` drawn only by its refresh thread (and once more at ``stop``).

    ``Progress.add_task`` redraws the whole display at once, on the calling thread: here the
    training thread, at every epoch, validation and tested task (75 draws in a 10-task run, about
    0.1 s). The refresh thread draws the new bar a moment later anyway.
    """

    def refresh(self) -> None:
        pass


class TaskProgressBar(ProgressBar):
    """Bars that say "Task 3/10 · epoch 1/5" on a terminal; elsewhere a plain line per epoch and test.

    With one Trainer per task, Lightning's own bars restart at "Epoch 0" for every task and never
    say where in the sequence the run is. The task comes from the algorithm (``task_id``,
    ``num_tasks``); the task being tested from the batch, because one test pass covers every task
    seen so far. Epochs are 1-based like tasks.

    Why not Lightning's ``RichProgressBar``: its refresh thread sleeps ``1/refresh_rate`` seconds
    with ``time.sleep`` and is joined when the bar stops, at the end of every ``fit`` and every
    ``test``, so each task waited up to two refresh periods for nothing (2 s a task at the
    refresh rate of 1 we used). ``rich.progress.Progress`` refreshes from a thread that waits on
    an event, which stopping sets: a stop costs microseconds at any refresh rate.

    On a terminal (or in Jupyter) the bars redraw in place: the training bar with the metrics
    logged with ``prog_bar=True`` (the current task's suffix cut: ``train/loss``), a validation
    bar while validating, a bar per tested task. Anywhere else (a pipe, a log file, SLURM's
    output) nothing is redrawn: one plain line, without escape codes, ends each epoch and each
    test. The metrics are read from the Trainer at most ``refresh_per_second`` times a second,
    since reading them synchronises with the device.

    ``console``: where to draw, by default rich's console on stdout (tests pass their own).
    """

    def __init__(self, refresh_per_second: float = 5.0, console: Console | None = None) -> None:
        super().__init__()
        self.refresh_per_second = refresh_per_second
        self._console = console
        self._enabled = True
        self._progress: Progress | None = None
        self._bars: dict[str, TaskID] = {}  # "train", "val", "test" -> the rich task shown for it
        self._metrics_read_at = 0.0
        self._started_at = 0.0
        self._batches = 0
        self._tested: list[int] = []  # tasks of this test pass, in order

    # ---- where and how to draw ---------------------------------------------------------------
    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console()
        return self._console

    @property
    def live(self) -> bool:
        """Redraw in place: only where the output is a terminal that understands it, or Jupyter."""
        return (self.console.is_terminal and not self.console.is_dumb_terminal) or self.console.is_jupyter

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def __getstate__(self) -> dict:
        # consoles and running displays hold locks and threads: a spawned process builds its own
        return {**self.__dict__, "_console": None, "_progress": None, "_bars": {}}

    # ---- texts ----------------------------------------------------------------------------------
    def _task_prefix(self) -> str:
        module = self.trainer.lightning_module if self._trainer is not None else None
        task_id, num_tasks = getattr(module, "task_id", None), getattr(module, "num_tasks", None)
        if task_id is None or num_tasks is None:
            return ""
        return f"Task {task_id + 1}/{num_tasks} · "

    def _train_description(self) -> str:
        description = f"{self._task_prefix()}epoch {self.trainer.current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        # as wide as the validation bar's, so the bars' columns stay aligned
        return f"{description:{len(self.validation_description)}}"

    @property
    def validation_description(self) -> str:
        return f"{self._task_prefix()}validation"

    @property
    def test_description(self) -> str:
        tested = f"testing task {self._tested[-1] + 1}" if self._tested else "testing"
        return f"{self._task_prefix()}{tested}"

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        """The ``prog_bar=True`` values, ``/task_<t>`` cut from the current task's names."""
        task_id = getattr(pl_module, "task_id", None)
        suffix = f"/task_{task_id + 1}" if task_id is not None else None
        return {
            (name[: -len(suffix)] if suffix and name.endswith(suffix) else name): value
            for name, value in trainer.progress_bar_metrics.items()
        }

    def _metrics_text(self, separator: str) -> str:
        return separator.join(
            _shown(name, value)
            for name, value in self.get_metrics(self.trainer, self.trainer.lightning_module).items()
        )

    # ---- the live display ------------------------------------------------------------------------
    def _start(self) -> None:
        if self._progress is None and self.is_enabled and self.live:
            self._progress = _DrawnByRefreshThread(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                _SpeedColumn(),
                TextColumn("{task.fields[metrics]}", markup=False),
                console=self.console,
                refresh_per_second=self.refresh_per_second,
            )
            self._progress.start()
            self._bars = {}

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()  # wakes the refresh thread: no waiting
            self._progress = None

    def _show(self, name: str, description: str, total: float) -> None:
        """Bar ``name`` restarted with a new description, drawn at the next refresh.

        Not drawn at once: a draw costs about a millisecond of the training thread's time, and a
        phase shorter than a refresh period is over before anyone could read it.
        """
        if self._progress is None:
            return
        if name in self._bars:
            self._progress.remove_task(self._bars.pop(name))
        total = None if total == float("inf") else total
        self._bars[name] = self._progress.add_task(description, total=total, metrics="")

    def _hide(self, name: str) -> None:
        if self._progress is not None and name in self._bars:
            self._progress.remove_task(self._bars.pop(name))

    def _advance(self, name: str, completed: int, with_metrics: bool = False) -> None:
        if self._progress is None or name not in self._bars:
            return
        fields = {}
        now = time.monotonic()
        if with_metrics and now - self._metrics_read_at >= 1 / self.refresh_per_second:
            fields["metrics"] = self._metrics_text(" ")
            self._metrics_read_at = now
        self._progress.update(self._bars[name], completed=completed, **fields)

    def _line(self, text: str) -> None:
        """One finished line where nothing is redrawn; no markup, highlighting or wrapping."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    # ---- training and validation -----------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._start()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started_at, self._batches = time.perf_counter(), 0
        self._show("train", self._train_description(), self.total_train_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._batches = batch_idx + 1
        self._advance("train", batch_idx + 1, with_metrics=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and self.has_dataloader_changed(dataloader_idx):
            self._show("val", self.validation_description, self.total_val_batches_current_dataloader)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            self._advance("val", batch_idx + 1)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._hide("val")
        self.reset_dataloader_idx_tracker()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # after this epoch's validation: the bar and the line get its val metrics
        if self._progress is not None and "train" in self._bars:
            self._progress.update(self._bars["train"], metrics=self._metrics_text(" "))
        elif self.is_enabled and not self.live:
            seconds = time.perf_counter() - self._started_at
            parts = [self._train_description().rstrip(), f"{self._batches} batches", f"{seconds:.1f} s"]
            self._line(" · ".join(part for part in (*parts, self._metrics_text(" · ")) if part))

    # ---- testing -----------------------------------------------------------------------------------
    def on_test_start(self, trainer, pl_module) -> None:
        self._tested, self._started_at = [], time.perf_counter()
        self._start()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        # batches are (x, local_labels, task_id): the bar of each test loader names its task
        if isinstance(batch, (tuple, list)) and len(batch) == 3:
            self._tested.append(int(batch[2]))
        self._show("test", self.test_description, self.total_test_batches_current_dataloader)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._advance("test", batch_idx + 1)

    def on_test_end(self, trainer, pl_module) -> None:
        self.reset_dataloader_idx_tracker()
        self._stop()
        if self._tested and self.is_enabled and not self.live:
            seconds = time.perf_counter() - self._started_at
            self._line(f"{self._task_prefix()}tested {_task_list(self._tested)} · {seconds:.1f} s")

    # ---- the end of every Trainer stage, however it ends -------------------------------------------
    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._stop()


def _task_list(tasks: list[int]) -> str:
    """0-based task ids as people count them: "task 3", "tasks 1-3", "tasks 1, 3"."""
    numbers = [t + 1 for t in tasks]
    if len(numbers) == 1:
        return f"task {numbers[0]}"
    if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"tasks {numbers[0]}-{numbers[-1]}"
    return "tasks " + ", ".join(map(str, numbers))


def task_progress_bar(enabled: bool = True, **kwargs: Any) -> Callback:
    """``TaskProgressBar(**kwargs)``, or a callback that does nothing when ``enabled`` is false.

    Lightning refuses a progress-bar callback together with ``enable_progress_bar=False``; the
    callbacks config passes ``enabled: ${trainer.enable_progress_bar}`` so that flag alone
    still switches the bar off (quiet test runs, benchmarks).
    """
    return TaskProgressBar(**kwargs) if enabled else Callback()


def _shown(name: str, value: Any) -> str:
    """An accuracy in %, as the accuracy matrix and the summary show it; other values as they are."""
    if not isinstance(value, float):
        return f"{name} {value}"
    if name.endswith("acc"):
        return f"{name} {100 * value:.1f}%"
    return f"{name} {value:.3f}"
