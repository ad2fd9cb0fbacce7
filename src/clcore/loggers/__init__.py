"""Lightning loggers adapted to a run of many Trainers that may be resumed."""

from clcore.loggers.csv import ResumableCSVLogger, drop_rows_after_task

__all__ = ["ResumableCSVLogger", "drop_rows_after_task"]
