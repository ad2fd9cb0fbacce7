"""Lightning's CSV logger, keeping the rows of the tasks a resumed run does not train again.

Lightning's ``ExperimentWriter`` deletes ``metrics.csv`` when its folder already holds files, so
a run resumed after task k lost the logged metrics of tasks 1..k; and after a restart it knew
none of the file's columns, so adding a column would rewrite the file without them. This writer
leaves the file to the run's resume policy (``clcore.clrun.resume.clear_previous_run`` removes it
when a run starts over) and takes the columns from the header of the file it continues.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from clcore.utils.atomic import write_text_atomic


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))

    def _check_log_dir_exists(self) -> None:
        """Keep what is there: the earlier tasks' rows of a resumed run."""


class ResumableCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to the ``metrics.csv`` it finds."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    def continue_after(self, last_step: int | None) -> None:
        """A run resumed after ``last_step`` drops the rows its interrupted task logged later (None: a fresh run)."""
        if last_step is not None:
            drop_rows_after_step(Path(self.log_dir) / "metrics.csv", last_step)


def drop_rows_after_step(metrics_file: Path, last_step: int) -> int:
    """Remove the rows logged after ``last_step``, the sequence-wide step of the checkpoint a run
    resumes from (``clcore.loggers.sequence_step``): a run killed in task k had written part of task
    k (Lightning saves the logger on the way out), which would otherwise appear twice. Returns the
    number of rows removed; the file is replaced atomically."""
    if not metrics_file.is_file():
        return 0
    with open(metrics_file, newline="") as stream:
        reader = csv.DictReader(stream)
        header, rows = list(reader.fieldnames or []), list(reader)
    kept = [row for row in rows if row.get("step") in ("", None) or int(float(row["step"])) <= last_step]
    if len(kept) < len(rows):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(metrics_file, buffer.getvalue())
    return len(rows) - len(kept)
