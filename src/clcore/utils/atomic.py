"""Atomic file writes: a crash mid-write leaves the previous complete file, never half a file.

Each writer writes a temporary ``.<name>.<16 hex digits>.tmp`` beside the target, then renames it
over the target. What can still go wrong is handled here, once for every writer:

- the temporary is created like any file the user creates (``0666`` less the umask, or the
  folder's default ACL), not ``0600`` as ``tempfile.mkstemp`` would: results are shared files;
- a full disk or quota (ENOSPC, EDQUOT) raises ``DiskFullError`` naming the target, even when
  ``torch.save`` has turned the stream's ``OSError`` into a C++ ``RuntimeError``;
- a writer killed outright (SIGKILL, power loss) cannot remove its temporary: the next run removes
  it with ``remove_stale_temporaries`` once it holds the folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

# The one naming pattern of the writers' temporaries; the cleaner removes exactly these.
TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.(?P<random>[0-9a-f]{16})\.tmp", re.DOTALL)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """No space or quota left while writing a file: an ``OSError``, so ``except OSError`` still catches it."""


def _disk_full_error(path: Path, error_number: int) -> DiskFullError:
    return DiskFullError(
        error_number,
        f"no space left on the device holding {path}: free space (or raise the quota), then re-run the "
        f"same command to continue from the last finished task (the previous {path.name}, if any, is intact)",
    )


def temporary_path(path: Path) -> Path:
    """Where the writers put ``path``'s new content before renaming it (a ``TEMPORARY_NAME``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _replace_atomically(path: Path, write) -> None:
    # Same folder as the target, so os.replace is a rename within one file system. "x" creates the
    # file exclusively with the mode any open() gives, which mkstemp's fixed 0600 does not.
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        full = _disk_full_errno(error)
        if full is not None:
            # The C++ zip writer's "enforce fail" or a bare ENOSPC says neither which file nor what to do.
            raise _disk_full_error(path, full) from None
        raise


def _disk_full_errno(error: BaseException | None) -> int | None:
    """ENOSPC/EDQUOT if ``error`` or an exception it was raised from/while handling is a full disk.

    ``torch.save`` reports a failed write of its stream as a ``RuntimeError`` raised while the
    stream's ``OSError`` was being handled, so the ``OSError`` is found in ``__context__``.
    """
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def write_text_atomic(path: str | Path, text: str) -> None:
    _replace_atomically(Path(path), lambda stream: stream.write(text.encode()))


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False, default=float) + "\n")


def torch_save_atomic(path: str | Path, obj: Any) -> None:
    import torch  # here: the text writers serve modules that must not import torch (Hydra callbacks)

    _replace_atomically(Path(path), lambda stream: torch.save(obj, stream))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries that writers killed mid-write left directly in ``folder``; returns them.

    Only regular files named exactly like ``TEMPORARY_NAME`` go (not ``.notes.tmp``, not
    ``x.tmp``, not symlinks or folders, nothing in subfolders). Call it only while holding the
    folder (the run's lock): a temporary of a writer still running would go too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        stale = sorted(
            Path(entry.path)
            for entry in entries
            if TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
        )
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
