"""Lightning loggers adapted to clcore's runs: many Trainers, one sequence-wide step, resumable, quiet.

Each logger here has ``continue_after(last_step)``, which the task loop calls before the first
write: ``None`` for a fresh run, else the step of the checkpoint the run resumes from.
"""

from clcore.loggers.csv import ResumableCSVLogger, drop_rows_after_step
from clcore.loggers.tensorboard import SequenceTensorBoardLogger
from clcore.loggers.wandb import QuietWandbLogger

__all__ = ["QuietWandbLogger", "ResumableCSVLogger", "SequenceTensorBoardLogger", "drop_rows_after_step"]
