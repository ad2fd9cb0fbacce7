"""The end-of-sequence alpha sweep of TAK as a table (CSV) and a plot (PNG).

Porrello et al. (ICLR 2026) report task addition with the merging coefficient chosen by a sweep
(0.1 .. 1.5 in their code). Each row holds one alpha: the merged model's accuracy on every task,
their mean ("absolute" accuracy) and the mean of accuracy / single-task accuracy ("normalised"
accuracy, Ortiz-Jimenez et al. 2023), where a task's single-task accuracy is that of its own task
vector alone, measured right after it trained. ``TAK`` computes the points; the ``TAKOutputs``
callback writes them with ``write_alpha_sweep``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clcore.utils.atomic import write_text_atomic


@dataclass
class SweepPoint:
    """The merged model at one alpha: accuracy per task (fractions in [0, 1])."""

    alpha: float
    task_accuracy: list[float]
    single_task_accuracy: list[float]

    @property
    def average_accuracy(self) -> float:
        return sum(self.task_accuracy) / len(self.task_accuracy)

    @property
    def normalized_accuracy(self) -> float:
        ratios = [
            acc / single for acc, single in zip(self.task_accuracy, self.single_task_accuracy) if single > 0
        ]
        return sum(ratios) / len(ratios) if ratios else math.nan


def sweep_csv(points: Sequence[SweepPoint]) -> str:
    num_tasks = len(points[0].task_accuracy)
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(
        ["alpha", *(f"task_{j + 1}" for j in range(num_tasks)), "average_accuracy", "normalized_accuracy"]
    )
    for point in points:
        writer.writerow(
            [
                f"{point.alpha:g}",
                *(f"{acc:.6f}" for acc in point.task_accuracy),
                f"{point.average_accuracy:.6f}",
                f"{point.normalized_accuracy:.6f}",
            ]
        )
    return stream.getvalue()


def write_alpha_sweep(points: Sequence[SweepPoint], csv_path: Path, png_path: Path, title: str = "") -> None:
    """``csv_path`` (one row per alpha) and ``png_path`` (average and normalised accuracy vs alpha)."""
    if not points:
        raise ValueError("an alpha sweep needs at least one point")
    write_text_atomic(csv_path, sweep_csv(points))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path.parent.mkdir(parents=True, exist_ok=True)
    alphas = [point.alpha for point in points]
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    axis.plot(
        alphas, [100 * p.average_accuracy for p in points], marker="o", label="absolute: mean task accuracy"
    )
    # the definition on the figure: it is a ratio, so it exceeds 100% where merging beats a task's own vector
    axis.plot(
        alphas,
        [100 * p.normalized_accuracy for p in points],
        marker="s",
        label="normalised: mean of accuracy / own task vector's\n(above 100%: better than the task alone)",
    )
    best = max(points, key=lambda p: p.average_accuracy)
    axis.axvline(best.alpha, color="grey", linestyle=":", label=f"best alpha {best.alpha:g}")
    axis.set_xlabel("alpha (coefficient per task vector for ta)")
    axis.set_ylabel("merged-model accuracy (%)")
    axis.set_title(title or "TAK alpha sweep")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
