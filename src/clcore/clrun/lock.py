"""One run per output folder: a second run started in a folder that is in use is refused at once.

Two runs writing one folder interleave their checkpoints and results (one run's
``acc_matrix.csv`` next to the other's ``config.yaml``). The lock is ``fcntl.flock`` on
``<output_dir>/.clcore.lock``: the kernel releases it when its process ends, however it ends
(SIGKILL, out of memory, a node reboot's lost NFS lease), so a crashed run never leaves the folder
locked; the file only names the holder (host, pid, start time, command) for the refusal message.
Only the first process of a multi-process (DDP) run locks: the others are its own ranks.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clcore.config_rules import ConfigError

LOCK_NAME = ".clcore.lock"


def is_first_process() -> bool:
    """Rank 0 of its node and of the run (Lightning's and torchrun's variables; absent: one process)."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


@contextmanager
def output_folder_lock(output_dir: Path) -> Iterator[None]:
    """Hold the folder's lock for the block, creating the folder if needed; raise ``ConfigError``
    naming the holder when another live process has it (nothing in the folder is changed then)."""
    if not is_first_process():
        yield
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    # O_RDWR without O_TRUNC: a refused run must not erase the holder's description
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 4096, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                [
                    f"output folder {output_dir} is in use by a run that is still going ({holder}). "
                    f"Wait for it to finish, stop it, or give this run its own folder (hydra.run.dir=...)"
                ]
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, _holder_description().encode(), 0)
        yield
    finally:
        os.close(handle)  # releases the lock


def _holder_description() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n"
