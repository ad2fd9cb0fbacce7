"""Errors a user can act on, raised before any training starts."""


class DataNotFoundError(FileNotFoundError):
    """A data set is missing (and could not be downloaded). The message says what to do."""
