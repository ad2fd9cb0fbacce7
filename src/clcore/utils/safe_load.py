"""Reading back files that a user or a previous run may have replaced: regular files of tensors only.

clcore reads its own torch files back (checkpoints, KFAC caches, task vectors, clta caches) from
folders that anything may have written to. Whatever is found there must not hang or take over
the run, so every such read goes through ``load_tensors_safely``:

- anything but a regular file is refused before it is opened: opening a FIFO blocks until
  something writes to it (start-up hangs for ever), a device gives endless data;
- the file is loaded with ``weights_only=True``, and a refusal gets clcore's own message: torch's
  advises ``weights_only=False``, the one way out that would run the file's code.
"""

from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

_KINDS = {"d": "a directory", "p": "a FIFO (named pipe)", "s": "a socket", "c": "a device", "b": "a device"}


class RefusedFileError(ValueError):
    """A file clcore will not read: not a regular file, or holding more than tensors and plain containers."""


def require_regular_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path``, unless it is not a regular file (a symlink to one is fine): checked without opening it.

    ``what`` names the file for the message (``"checkpoint"``, ``"KFAC cache file"``). A missing
    file raises ``FileNotFoundError`` as usual.
    """
    path = Path(path)
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.filemode(mode)[0], "a special file")
        raise RefusedFileError(
            f"{what} {path} is {kind}, not a regular file, so it was refused without opening it. "
            f"clcore only writes regular files there: remove it, then run again"
        )
    return path


def load_tensors_safely(
    path: str | os.PathLike[str], what: str, *, map_location: Any = "cpu", lazy: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)`` of a regular file, refusals worded by clcore.

    ``lazy``: map the tensors from the file instead of reading them (torch's zip format only; other
    files are read normally). Raises ``RefusedFileError`` for a file that is not regular or holds
    pickled Python objects; any other failure (truncated, not a torch file) is torch's, unchanged.
    """
    path = require_regular_file(path, what)
    try:
        return torch.load(
            path, map_location=map_location, weights_only=True, mmap=lazy and zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as error:
        # Not chained: torch's message, shown under ours, would suggest weights_only=False.
        raise RefusedFileError(
            f"{what} {path} cannot be read safely: it holds pickled Python objects beyond tensors and plain "
            f"containers, or is no torch file at all{_detail(error)}. Loading such a file would execute code, "
            f"so it was refused without running anything. clcore never writes such files: delete it if you did "
            f"not write it"
        ) from None


def _detail(error: pickle.UnpicklingError) -> str:
    """torch's one line on what it met (e.g. ``unsupported GLOBAL posix.system``), without its advice."""
    lines = [line.strip() for line in str(error).splitlines()]
    found = [line for line in lines if "unsupported" in line.lower() and "weights_only" not in line]
    return f" ({found[-1].rstrip('.')})" if found else ""
