"""Per-task learning curves: training loss per step and validation metrics per epoch, as CSV and PNG."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from clcore.callbacks.base import CLCallback
from clcore.callbacks.figures import run_caption
from clcore.loggers.sequence_step import is_logged_step, logging_step
from clcore.metrics.names import split_task_metric


class LearningCurves(CLCallback):
    """Collects what the algorithm logs under ``train/*/task_<t>`` and ``val/*/task_<t>`` and
    writes ``results/learning_curves.csv`` after every task and ``plots/learning_curves.png``.

    The training loss is the step's own loss (``outputs`` of ``training_step``, for automatic
    and manual optimisation alike); other training scalars (e.g. HAT's
    ``train/mask_sparsity_reg``) and the validation metrics are read from
    ``trainer.callback_metrics``. Sampling happens on the steps the algorithm logs on
    (``trainer.log_every_n_steps``, plus each epoch's first batch), so the values are fresh, the
    steps are those in the loggers' files, and reading them costs one host synchronisation per
    logged step, not per step. ``every_n_steps`` samples on other steps instead (then only the
    training loss is sure to be the step's own).

    The x axis (``sequence_step``) is the loggers' sequence-wide step
    (``clcore.loggers.sequence_step``), so the tasks' curves sit side by side and every point is
    where the loggers have it; ``step`` is the training batch within its task. The curves are part of each task's checkpoint, so a resumed run keeps those of
    the tasks it does not train again.
    ``plot=False`` (the run's ``plots`` setting, off by default for speed) writes the CSV only.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        output_subdir: str = "plots",
        every_task: bool = False,
        plot: bool = True,
    ) -> None:
        self.every_n_steps = every_n_steps
        self.output_subdir = output_subdir
        self.every_task = every_task
        self.plot = plot
        self.rows: list[dict] = []  # {"task", "step", "sequence_step", "metric", "value"}
        self._batches_in_task = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._batches_in_task = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = self._batches_in_task  # 0-based training batch of this task
        self._batches_in_task += 1
        if self.every_n_steps:
            sampled = (step + 1) % self.every_n_steps == 0 or batch_idx == 0
        else:  # the steps the loggers write, and where each epoch's curve starts
            sampled = is_logged_step(trainer, batch_idx)
        if not trainer.is_global_zero or not sampled:
            return
        task = pl_module.task_id + 1
        values = _of_task(trainer.callback_metrics, task, "train/")
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            values["train/loss"] = loss
        for metric, value in values.items():
            self._record(task, step, logging_step(trainer), metric, value)

    def on_validation_end(self, trainer, pl_module) -> None:
        # after Lightning reduced the epoch's values into callback_metrics (not yet in on_validation_epoch_end)
        if trainer.sanity_checking or not trainer.is_global_zero or self._batches_in_task == 0:
            return
        task = pl_module.task_id + 1
        # validation runs inside the epoch's last training batch: its values are logged at that step
        for metric, value in _of_task(trainer.callback_metrics, task, "val/").items():
            self._record(task, self._batches_in_task - 1, logging_step(trainer), metric, value)

    def _record(self, task: int, step: int, sequence_step: int, metric: str, value) -> None:
        self.rows.append(
            {
                "task": task,
                "step": step,
                "sequence_step": sequence_step,
                "metric": metric,
                "value": float(value),
            }
        )

    def on_task_end(self, trainer, algorithm, task_id: int, results) -> None:
        if not trainer.is_global_zero:
            return
        from clcore.utils.atomic import write_text_atomic

        write_text_atomic(Path(trainer.default_root_dir) / "results" / "learning_curves.csv", self.csv())
        if self.plot and self.every_task:
            self.draw(
                Path(trainer.default_root_dir) / self.output_subdir, run_caption(trainer, algorithm, results)
            )

    def on_sequence_end(self, trainer, algorithm, results) -> None:
        if self.plot and trainer.is_global_zero and self.rows:
            self.draw(
                Path(trainer.default_root_dir) / self.output_subdir, run_caption(trainer, algorithm, results)
            )

    # ---- resume: the checkpoint carries the curves of the finished tasks --------------------
    COLUMNS = ("task", "step", "sequence_step", "metric", "value")

    def state_dict(self) -> dict:
        """The rows as columns of plain numbers and strings (a ``weights_only`` checkpoint holds them)."""
        return {"columns": {name: [row[name] for row in self.rows] for name in self.COLUMNS}}

    def load_state_dict(self, state: dict) -> None:
        columns = state["columns"]
        self.rows = [dict(zip(self.COLUMNS, values)) for values in zip(*(columns[n] for n in self.COLUMNS))]

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def draw(self, folder: Path, caption: str = "") -> Path:
        """One panel per metric (training loss first), one colour per task, task boundaries dotted;
        ``caption`` (``figures.run_caption``: which run) across the top."""
        import matplotlib

        from clcore.callbacks.figures import add_caption, new_figure, save_png

        folder.mkdir(parents=True, exist_ok=True)
        metrics = sorted(
            {row["metric"] for row in self.rows},
            key=lambda m: (m != "train/loss", not m.startswith("train/"), m),
        )
        tasks = sorted({row["task"] for row in self.rows})
        colours = matplotlib.colormaps["tab10"]
        columns = min(len(metrics), 2)
        rows = math.ceil(len(metrics) / columns)
        # room above for the figure's title and each panel's, below each panel for its x label
        fig, axes = new_figure(6.0 * columns, 3.0 * rows, rows, columns, margins=(0.8, 0.2, 0.55, 0.9))
        starts = {
            task: min(r["sequence_step"] - r["step"] for r in self.rows if r["task"] == task)
            for task in tasks
        }
        for ax, metric in zip(axes.flat, metrics):
            for task in tasks:
                points = [
                    (r["sequence_step"], r["value"] * _scale(metric))
                    for r in self.rows
                    if r["task"] == task and r["metric"] == metric
                ]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(
                        xs,
                        ys,
                        marker="o" if metric.startswith("val/") else None,
                        ms=3,
                        lw=1.2,
                        color=colours((task - 1) % 10),
                        label=f"task {task}",
                    )
            for task in tasks[1:]:
                ax.axvline(starts[task], color="gray", lw=0.7, ls=":")
            ax.set_title(f"{metric} (%)" if _scale(metric) == 100 else metric)
            ax.set_xlabel("training step (whole sequence)")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7, ncol=max(1, len(tasks) // 5))
        fig.suptitle(
            "learning curves per task (dotted: a new task starts)", fontsize=10, y=1 - 0.25 / (3.0 * rows)
        )
        add_caption(fig, caption, 3.0 * rows)
        return save_png(fig, folder / "learning_curves.png", dpi=110)


def _of_task(metrics: Mapping, task: int, split: str) -> dict:
    """The values of ``split`` (``"train/"``) logged for the 1-based ``task``, by quantity (``train/loss``)."""
    found = {}
    for name, value in metrics.items():
        named = split_task_metric(name)
        if named is not None and named[1] == task and named[0].startswith(split):
            found[named[0]] = value
    return found


def _scale(metric: str) -> int:
    """Accuracies are drawn in %, as the accuracy matrix and the summary show them (the CSV keeps fractions)."""
    return 100 if metric.endswith("acc") else 1
