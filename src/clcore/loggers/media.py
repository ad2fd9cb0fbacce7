"""Tables and images for the loggers that show them (TensorBoard, W&B); the others get none.

The accuracy matrix is a table, one row per trained task, rather than T(T+1)/2 scalars of one
point each; the run's plots (``plots/*.png``, the Captum maps) are images. Both are logged at the
sequence-wide step (``clcore.loggers.sequence_step``) of the task they describe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

ACCURACY_MATRIX_KEY = "test/acc_matrix"


def accuracy_matrix_rows(results) -> tuple[list[str], list[list]]:
    """Columns and rows of R so far in %: ``after task``, ``task 1``..``task T``; None where not measured."""
    done = results.tasks_done
    columns = ["after task", *(f"task {j + 1}" for j in range(done))]
    rows = []
    for i in range(done):
        cells = results.acc_matrix[i, :done].tolist()
        rows.append([i + 1, *(None if math.isnan(v) else round(100 * v, 2) for v in cells)])
    return columns, rows


def _markdown(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join("" if v is None else f"{v:g}" for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _showing(loggers: Iterable[Logger]) -> list[Logger]:
    """The loggers that show tables and images (the others get none, and nothing is computed for them)."""
    return [logger for logger in loggers if isinstance(logger, (WandbLogger, TensorBoardLogger))]


def log_accuracy_matrix(loggers: Iterable[Logger], results, step: int) -> None:
    """R after the latest task, as a table: W&B ``Table``, TensorBoard text (a markdown table)."""
    shown = _showing(loggers)
    if not shown:
        return
    columns, rows = accuracy_matrix_rows(results)
    for logger in shown:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=ACCURACY_MATRIX_KEY, columns=columns, data=rows, step=step)
        elif isinstance(logger, TensorBoardLogger):
            text = f"accuracy (%) on each task (columns) after each task (rows)\n\n{_markdown(columns, rows)}"
            logger.experiment.add_text(ACCURACY_MATRIX_KEY, text, step)


def log_images(loggers: Iterable[Logger], images: Mapping[str, Path] | Path, step: int) -> None:
    """PNG files as images, under their keys (``plots/acc_matrix``); a folder: the run's images in
    it (``run_images``), looked for only when a logger shows images."""
    shown = _showing(loggers)
    if not shown:
        return
    if isinstance(images, Path):
        images = run_images(images)
    from matplotlib.image import imread

    for key, path in images.items():
        for logger in shown:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)], step=step)
            else:
                pixels = imread(path)  # float in [0, 1], RGB or RGBA
                logger.experiment.add_image(key, pixels[..., :3], step, dataformats="HWC")


def run_images(output_dir: Path) -> dict[str, Path]:
    """The PNG files a run wrote (its plots and attribution maps), keyed by their path without suffix."""
    output_dir = Path(output_dir)
    return {
        path.relative_to(output_dir).with_suffix("").as_posix(): path
        for path in sorted(output_dir.rglob("*.png"))
        if path.relative_to(output_dir).parts[0] not in ("logs", "wandb", "checkpoints")
    }
