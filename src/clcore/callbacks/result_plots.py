"""PNG plots of a run's results: the accuracy matrix and accuracy / BWT across tasks."""

from __future__ import annotations

import math
from pathlib import Path

from clcore.callbacks.base import CLCallback
from clcore.callbacks.figures import run_caption
from clcore.metrics.continual import average_accuracy
from clcore.metrics.results import ContinualResults


class ResultPlots(CLCallback):
    """Writes ``plots/acc_matrix.png`` and ``plots/average_accuracy.png`` at the end of the sequence.

    Drawn once at the end (not per task) so plotting never slows the task loop; the numbers
    themselves are written after every task by the task loop. ``plot=False`` (the run's
    ``plots`` setting, off by default for speed) draws nothing.
    """

    def __init__(self, output_subdir: str = "plots", every_task: bool = False, plot: bool = True) -> None:
        self.output_subdir = output_subdir
        self.every_task = every_task
        self.plot = plot

    def on_task_end(self, trainer, algorithm, task_id: int, results: ContinualResults) -> None:
        if self.plot and self.every_task and trainer.is_global_zero:
            self.draw(
                results,
                Path(trainer.default_root_dir) / self.output_subdir,
                run_caption(trainer, algorithm, results),
            )

    def on_sequence_end(self, trainer, algorithm, results: ContinualResults) -> None:
        if self.plot and trainer.is_global_zero:
            self.draw(
                results,
                Path(trainer.default_root_dir) / self.output_subdir,
                run_caption(trainer, algorithm, results),
            )

    @staticmethod
    def draw(results: ContinualResults, folder: Path, caption: str = "") -> list[Path]:
        """The two PNGs; ``caption`` (``figures.run_caption``: which run, final AA / BWT) on top of each."""
        from clcore.callbacks.figures import add_caption, new_figure, save_png

        folder.mkdir(parents=True, exist_ok=True)
        R = results.trained.numpy() * 100
        k = results.tasks_done
        ticks = list(range(k))
        labels = [str(t + 1) for t in ticks]

        # 0.6 inch a cell, around it room for the labels and the colour bar (and the title, for k = 1)
        # wide enough for the caption's line
        width, height = max(5.2, 1.6 + 0.6 * k), max(2.3, 1.3 + 0.6 * k)
        fig, axes = new_figure(width, height, margins=(0.55, 0.45, 0.5, 0.6))
        add_caption(fig, caption, height)
        ax = axes[0, 0]
        image = ax.imshow(R, vmin=0, vmax=100, cmap="viridis")
        for i in range(k):
            for j in range(i + 1):
                if not math.isnan(R[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{R[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if R[i, j] < 60 else "black",
                    )
        ax.set_xticks(ticks, labels)
        ax.set_yticks(ticks, labels)
        ax.set_xlabel("evaluated on task j")
        ax.set_ylabel("after training task i")
        ax.set_title("accuracy R[i, j] (%)")
        fig.colorbar(image, ax=ax, fraction=0.046)
        matrix_path = save_png(fig, folder / "acc_matrix.png", dpi=120)

        aa = average_accuracy(results.trained).numpy() * 100
        bwt = [math.nan] + [float((R[i, :i] - R.diagonal()[:i]).mean()) for i in range(1, k)]
        fig, axes = new_figure(9, 3.4, 1, 2, margins=(0.7, 0.15, 0.5, 0.35), gaps=(0.85, 0))
        add_caption(fig, caption, 3.4)
        left, right = axes[0]
        left.plot([t + 1 for t in ticks], aa, marker="o")
        left.set_xlabel("after training task")
        left.set_ylabel("average accuracy (%)")
        left.set_ylim(0, 100)
        left.grid(alpha=0.3)
        right.plot([t + 1 for t in ticks], bwt, marker="o", color="tab:red")
        right.axhline(0, color="gray", lw=0.8)
        right.set_xlabel("after training task")
        right.set_ylabel("BWT (points)")
        right.grid(alpha=0.3)
        for ax in (left, right):  # tasks are whole numbers, and both panels span the same tasks
            ax.set_xticks([t + 1 for t in ticks])
            ax.set_xlim(0.5, k + 0.5)
        curve_path = save_png(fig, folder / "average_accuracy.png", dpi=120)
        return [matrix_path, curve_path]
