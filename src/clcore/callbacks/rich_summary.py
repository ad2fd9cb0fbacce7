"""A one-screen summary at the end of a run: accuracy matrix, average accuracy, BWT, files."""

from __future__ import annotations

import math
from pathlib import Path

from clcore.callbacks.base import CLCallback
from clcore.metrics.results import ContinualResults


class RichSummary(CLCallback):
    """Prints, with ``rich``, after the last task: the accuracy matrix (%) with the average
    accuracy after each task in the last column, the headline metrics, and where the run's
    files are (results, plots, logs, and the ``wandb sync`` command for an offline wandb run)."""

    def on_sequence_end(self, trainer, algorithm, results: ContinualResults) -> None:
        if not trainer.is_global_zero:
            return
        from rich.console import Console
        from rich.table import Table

        k = results.tasks_done
        summary = results.summary()
        table = Table()
        table.add_column("after", justify="right")
        for j in range(k):
            table.add_column(f"task {j + 1}", justify="right")
        table.add_column("avg", justify="right", style="bold")
        for i in range(k):
            row = results.acc_matrix[i].tolist()
            cells = ["" if j > i or math.isnan(row[j]) else f"{100 * row[j]:.1f}" for j in range(k)]
            table.add_row(str(i + 1), *cells, f"{100 * summary['average_accuracy_per_task'][i]:.1f}")
        console = Console()
        if not console.is_terminal:
            # a log file has no width: rich's default 80 columns would squeeze the matrix ("74…")
            natural = console.measure(table, options=console.options.update_width(10_000)).maximum
            console = Console(width=max(console.width, natural))
        console.print(
            "accuracy R[i, j] (%): row i = after training task i, column j = task j",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        console.print(table)
        line = f"average accuracy {100 * summary['average_accuracy']:.2f}%"
        if summary["bwt"] is not None:
            line += f"  |  BWT {100 * summary['bwt']:+.2f} points"
        if summary.get("fwt") is not None:
            line += f"  |  FWT {100 * summary['fwt']:+.2f} points"
        if summary.get("capacity"):
            line += f"  |  capacity left {100 * summary['capacity'][-1]:.1f}%"
        console.print(line)
        for text in self.file_lines(Path(trainer.default_root_dir).resolve()):
            console.print(text, highlight=False, soft_wrap=True)

    @staticmethod
    def file_lines(output: Path) -> list[str]:
        """Where to look next: the run folder and what it holds, as far as it exists."""
        lines = [f"results in {output}"]
        found = [
            ("results/acc_matrix.csv", "accuracy matrix: {}"),
            ("results/summary.json", "summary: {}"),
            ("plots", "plots: {}"),
            ("attributions", "attribution maps: {}"),
            ("logs/metrics.csv", "metrics (CSV): {}"),
            ("logs/tensorboard", "TensorBoard: tensorboard --logdir {}"),
        ]
        for relative, line in found:
            if (output / relative).exists():
                lines.append("  " + line.format(output / relative))
        for run in sorted((output / "wandb").glob("offline-run-*")):
            lines.append(f"  wandb (offline), upload with: wandb sync {run}")
        return lines
