"""Errors a user can act on, raised before any training starts."""

from __future__ import annotations

from pathlib import Path

# What to do about a damaged copy of an official file, in every message that names one.
REPLACE_FILE = (
    "delete it and run once with benchmark.download=true on a machine with internet access, "
    "or copy an intact official file there"
)


class DataNotFoundError(FileNotFoundError):
    """A data set is missing (and could not be downloaded). The message says what to do."""


class DamagedDataError(ValueError):
    """A data file is present but unusable: empty, truncated, not in its format, or holding values
    its data set cannot have (or two files of one data set disagree). The message names the file,
    what is wrong with it, and what to do.

    A ``ValueError``, so ``clrun``'s pre-flight check reports it with the other data problems.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = REPLACE_FILE) -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}; {fix}")

    def __reduce__(self):  # pickled whole (a launcher sends errors between processes)
        return type(self), (self.path, self.problem, self.fix)
