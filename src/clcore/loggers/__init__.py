"""Lightning loggers adapted to clcore's runs: many Trainers, resumable, quiet."""

from clcore.loggers.csv import ResumableCSVLogger, drop_rows_after_task
from clcore.loggers.wandb import QuietWandbLogger

__all__ = ["QuietWandbLogger", "ResumableCSVLogger", "drop_rows_after_task"]
