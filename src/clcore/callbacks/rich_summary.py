"""A one-screen summary at the end of a run: accuracy matrix, average accuracy, BWT, files."""

from __future__ import annotations

import math
from pathlib import Path

from clcore.callbacks.base import CLCallback
from clcore.metrics.results import ContinualResults


class RichSummary(CLCallback):
    """Prints the accuracy matrix (%) and the headline metrics with ``rich`` after the last task."""

    def on_sequence_end(self, trainer, algorithm, results: ContinualResults) -> None:
        if not trainer.is_global_zero:
            return
        from rich.console import Console
        from rich.table import Table

        k = results.tasks_done
        table = Table(title="accuracy R[i, j] (%): row = after training task i, column = task j")
        table.add_column("after", justify="right")
        for j in range(k):
            table.add_column(f"task {j + 1}", justify="right")
        for i in range(k):
            row = results.acc_matrix[i].tolist()
            table.add_row(str(i + 1), *["" if j > i or math.isnan(row[j]) else f"{100 * row[j]:.1f}" for j in range(k)])
        summary = results.summary()
        console = Console()
        console.print(table)
        line = f"average accuracy {100 * summary['average_accuracy']:.2f}%"
        if summary["bwt"] is not None:
            line += f"  |  BWT {100 * summary['bwt']:+.2f} points"
        if summary.get("fwt") is not None:
            line += f"  |  FWT {100 * summary['fwt']:+.2f} points"
        if summary.get("capacity"):
            line += f"  |  capacity {100 * summary['capacity'][-1]:.1f}%"
        console.print(line)
        console.print(f"results in {Path(trainer.default_root_dir).resolve()}")
